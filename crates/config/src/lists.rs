use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list of words given either as a TOML array or as one string separated
/// by commas or spaces — the form sendmail's m4 knobs use
/// (`DIGEST-MD5 CRAM-MD5 LOGIN`) and the only form an environment variable has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WordList(Vec<String>);

impl WordList {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn contains_ignore_case(&self, word: &str) -> bool {
        self.iter().any(|w| w.eq_ignore_ascii_case(word))
    }
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl<const N: usize> From<[&str; N]> for WordList {
    fn from(words: [&str; N]) -> Self {
        WordList(words.iter().map(|w| (*w).to_owned()).collect())
    }
}

impl From<Vec<String>> for WordList {
    fn from(words: Vec<String>) -> Self {
        WordList(words)
    }
}

fn split(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Serialize for WordList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for WordList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) => WordList(split(&s)),
            Raw::Many(v) => WordList(v.iter().flat_map(|s| split(s)).collect()),
        })
    }
}
