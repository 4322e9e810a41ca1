//! Bytes from a client, cut into arbitrary TCP segments → `LineBuffer`. However the
//! bytes are segmented, the lines are those of a one-shot reference split: a line
//! over the limit (CRLF counted) is refused whole, and nothing of it leaks into the next.
#![no_main]

use libfuzzer_sys::fuzz_target;
use authrelay_smtp::command::{Line, LineBuffer};

fn reference(input: &[u8], max: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let (line, tail) = rest.split_at(pos + 2);
        rest = tail;
        if line.len() > max {
            out.push(Line::TooLong);
        } else {
            out.push(Line::Complete(line[..pos].to_vec()));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // Small limits reach the over-long paths with small inputs.
    let max = 4 + usize::from(first & 0x3f);
    let segment = 1 + usize::from(first >> 6) * 7;
    let mut buf = LineBuffer::default();
    let mut got = Vec::new();
    for chunk in rest.chunks(segment) {
        buf.push(chunk);
        while let Some(line) = buf.next_line(max) {
            got.push(line);
        }
    }
    assert_eq!(got, reference(rest, max));
});
