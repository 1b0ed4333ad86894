//! An agent's labels (site, version, ...): at most 32; keys of 1 to 63
//! characters of `[A-Za-z0-9._/-]`; values of at most 255 bytes.

use std::collections::BTreeMap;

/// An agent's labels, by key.
pub type Labels = BTreeMap<String, String>;

/// The most labels an agent may carry.
pub const MAX_LABELS: usize = 32;
/// The longest label key, in characters.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 255;

/// Labels that break the rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// More than [`MAX_LABELS`] labels.
    #[error("{0} labels given (at most 32)")]
    TooMany(usize),
    /// A key that is empty, too long, or holds a character outside the set.
    #[error("label key {0:?} must be 1 to 63 characters of [A-Za-z0-9._/-]")]
    Key(String),
    /// A value longer than [`MAX_LABEL_VALUE_LEN`] bytes.
    #[error("label {0:?} has a value over 255 bytes")]
    Value(String),
}

/// Checks one label.
pub fn check_label(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    if !key_ok {
        return Err(LabelError::Key(key.to_owned()));
    }
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(LabelError::Value(key.to_owned()));
    }
    Ok(())
}

/// Checks a set of labels: their number, then each key and value.
pub fn check_labels<'a, I>(labels: I) -> Result<(), LabelError>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
    I::IntoIter: ExactSizeIterator,
{
    let labels = labels.into_iter();
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    for (k, v) in labels {
        check_label(k, v)?;
    }
    Ok(())
}

/// Labels as a server keeps them: sorted by key, in one slice with no spare
/// capacity (a map's node would cost half a kilobyte for one label).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[(Box<str>, Box<str>)]>);

impl LabelSet {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The labels, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a map.
    pub fn to_map(&self) -> Labels {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl From<&Labels> for LabelSet {
    fn from(map: &Labels) -> LabelSet {
        // A BTreeMap iterates in key order: the slice is sorted.
        LabelSet(
            map.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_follow_the_rules() {
        assert_eq!(check_label("site", "eu-west/1 a"), Ok(()));
        assert_eq!(check_label("", "v"), Err(LabelError::Key(String::new())));
        assert!(check_label("a:b", "v").is_err());
        assert!(check_label("é", "v").is_err());
        assert!(check_label(&"k".repeat(64), "v").is_err());
        assert_eq!(check_label(&"k".repeat(63), "v"), Ok(()));
        assert_eq!(
            check_label("k", &"v".repeat(256)),
            Err(LabelError::Value("k".into()))
        );
        assert_eq!(check_label("k", &"v".repeat(255)), Ok(()));
        let many: Labels = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(check_labels(&many), Err(LabelError::TooMany(33)));
        assert_eq!(check_labels(&map(&[("a", "1"), ("b", "2")])), Ok(()));
        assert!(
            LabelError::Key("a:b".into())
                .to_string()
                .contains("label key")
        );
    }

    #[test]
    fn label_sets_keep_the_maps_content_and_order() {
        let m = map(&[("site", "eu"), ("app", "web"), ("zone", "b")]);
        let set = LabelSet::from(&m);
        assert_eq!(set.get("site"), Some("eu"));
        assert_eq!(set.get("zone"), Some("b"));
        assert_eq!(set.get("nope"), None);
        assert_eq!(set.to_map(), m);
        assert_eq!(
            set.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["app", "site", "zone"]
        );
        assert!(LabelSet::default().is_empty());
    }
}
