"""Parse a /metrics body (stdin) with the prometheus_client package's own
parsers, which we did not write: `text` = Prometheus text format 0.0.4,
`openmetrics` = OpenMetrics 1.0 (strict: needs `# EOF`). Prints JSON:
{"families": [{"name", "type", "samples": [{"name", "labels", "value"}]}]}
or {"error": "..."}.

The 0.0.4 parser is lenient, so `text` also checks what Prometheus' own
(Go) parser relies on: each sample belongs to the family its `# TYPE`
line names (a counter's TYPE names `x_total`, its sample), and there is
no `# EOF`, which 0.0.4 does not have."""

import json
import sys

mode = sys.argv[1]
body = sys.stdin.read()
try:
    if mode == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
        typed = {}
        for line in body.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                typed[name] = kind
            elif line == "# EOF":
                raise ValueError("# EOF is not part of the 0.0.4 format")
            elif line and not line.startswith("#"):
                sample = line.split("{")[0].split(" ")[0]
                ok = sample in typed or any(
                    sample == base + suffix and typed[base] in ("histogram", "summary")
                    for base in typed
                    for suffix in ("_bucket", "_sum", "_count")
                )
                if not ok:
                    raise ValueError(f"sample {sample} has no # TYPE line of its own")
    families = [
        {
            "name": f.name,
            "type": f.type,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples
            ],
        }
        for f in text_string_to_metric_families(body)
    ]
    print(json.dumps({"families": families}))
except Exception as e:  # noqa: BLE001 - report any parse failure
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
