//! The safetensors header, read as it streams by: each tensor entry straight into a small struct
//! (a dtype name, at most [`MAX_DIMS`] dimensions, two offsets), the metadata keys rnvp uses as
//! strings, everything else skipped without being stored. A hostile header (a 100 MB `shape`
//! array, a million metadata keys) then costs about its own size in memory, never a multiple.
//! Each entry is checked as it is read, and the first problem (a missing or repeated field, a bad
//! dimension) ends the parse with the tensor's name, so no header builds up entries it will refuse.
use serde::de::{Deserialize, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// More dimensions than any tensor rnvp reads (PyTorch's own limit is 64).
pub const MAX_DIMS: usize = 64;
/// Metadata keys rnvp reads; others are skipped.
const KEYS: [&str; 8] =
    ["config", "scaler", "bounds", "whiten", "images", "optimizer_step", "info", "format"];

/// A field's value as read, or what was wrong with it.
type Field<T> = Option<Result<T, String>>;

/// One tensor entry as read, each field checked on its own (against the data section later).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `dtype` (at most 16 characters).
    pub dtype: Box<str>,
    /// `shape`.
    pub shape: Box<[i64]>,
    /// `data_offsets`.
    pub offsets: (u64, u64),
}

/// An entry's fields while it is read (a field given twice is a problem).
#[derive(Debug, Default)]
struct Fields {
    dtype: Field<String>,
    shape: Field<Vec<i64>>,
    offsets: Field<(u64, u64)>,
    twice: Option<&'static str>,
}

impl Fields {
    fn entry(self) -> Result<Entry, String> {
        if let Some(f) = self.twice {
            return Err(format!("{f} appears twice"));
        }
        Ok(Entry {
            dtype: self.dtype.ok_or("no dtype")??.into_boxed_str(),
            shape: self.shape.ok_or("no shape")??.into_boxed_slice(),
            offsets: self.offsets.ok_or("no data_offsets")??,
        })
    }
}

/// The header: tensor entries in file order, and the metadata rnvp reads (`None`: the value is
/// not a string).
#[derive(Debug, Default)]
pub struct Header {
    pub tensors: Vec<(String, Entry)>,
    pub metadata: BTreeMap<String, Option<String>>,
}

/// Implements `Deserialize` for a type through a visitor that takes any JSON value: `seq` and
/// `map` get the visitor's own handling (or are consumed), every other kind of value becomes
/// `$other(description)`.
macro_rules! any_value {
    ($ty:ty, $expecting:literal, $other:expr, |$s:ident| $seq:block, |$m:ident| $map:block, |$v:ident| $str:block) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<$ty, E> {
                        Ok($other("a boolean"))
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<$ty, E> {
                        Ok(if v >= 0 { <$ty>::from_u64(v as u64) } else { $other("negative") })
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<$ty, E> {
                        Ok(<$ty>::from_u64(v))
                    }
                    fn visit_f64<E>(self, _: f64) -> Result<$ty, E> {
                        Ok($other("a fraction or a number beyond 64 bits"))
                    }
                    fn visit_unit<E>(self) -> Result<$ty, E> {
                        Ok($other("null"))
                    }
                    fn visit_str<E>(self, $v: &str) -> Result<$ty, E> {
                        Ok($str)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut $s: A) -> Result<$ty, A::Error> {
                        $seq
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut $m: A) -> Result<$ty, A::Error> {
                        $map
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

/// Consumes the rest of a sequence or map without storing it.
fn skip_seq<'de, A: SeqAccess<'de>>(s: &mut A) -> Result<(), A::Error> {
    while s.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(m: &mut A) -> Result<(), A::Error> {
    while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Reads an array of numbers through `take` (which turns each into a value or a problem),
/// keeping at most `most` (more is the problem `too_many`). After the first problem the rest of
/// the array is consumed without being stored.
fn numbers<'de, A: SeqAccess<'de>, T>(
    s: &mut A,
    most: usize,
    too_many: &str,
    take: impl Fn(Num) -> Result<T, String>,
) -> Result<Result<Vec<T>, String>, A::Error> {
    let mut got = vec![];
    let mut problem: Option<String> = None;
    while let Some(n) = s.next_element::<Num>()? {
        if problem.is_some() {
            continue;
        }
        match take(n) {
            Ok(_) if got.len() == most => problem = Some(too_many.to_string()),
            Ok(v) => got.push(v),
            Err(p) => problem = Some(p),
        }
    }
    Ok(problem.map_or(Ok(got), Err))
}

/// One JSON value where a non-negative integer belongs.
enum Num {
    Value(u64),
    Other(&'static str),
}

impl Num {
    fn from_u64(v: u64) -> Self {
        Num::Value(v)
    }
}

any_value!(
    Num,
    "a number",
    Num::Other,
    |s| {
        skip_seq(&mut s)?;
        Ok(Num::Other("an array"))
    },
    |m| {
        skip_map(&mut m)?;
        Ok(Num::Other("an object"))
    },
    |_v| { Num::Other("a string") }
);

/// A string, or `None` for any other JSON value (consumed without being stored).
struct Text(Option<String>);

impl Text {
    fn from_u64(_: u64) -> Self {
        Text(None)
    }
    fn other(_: &'static str) -> Self {
        Text(None)
    }
}

any_value!(
    Text,
    "a string",
    Text::other,
    |s| {
        skip_seq(&mut s)?;
        Ok(Text(None))
    },
    |m| {
        skip_map(&mut m)?;
        Ok(Text(None))
    },
    |v| { Text(Some(v.to_string())) }
);

/// `shape`: at most [`MAX_DIMS`] non-negative integers that fit in an `i64`.
struct Dims(Result<Vec<i64>, String>);

impl Dims {
    fn from_u64(_: u64) -> Self {
        Dims(Err("shape is a number, not an array".into()))
    }
    fn other(what: &'static str) -> Self {
        Dims(Err(format!("shape is {what}, not an array")))
    }
}

any_value!(
    Dims,
    "an array of dimensions",
    Dims::other,
    |s| {
        let dims = numbers(&mut s, MAX_DIMS, &format!("more than {MAX_DIMS} dimensions"), |v| match v {
            Num::Value(v) if v <= i64::MAX as u64 => Ok(v as i64),
            Num::Value(v) => Err(format!("bad dimension {v}")),
            Num::Other(what) => Err(format!("bad dimension ({what})")),
        })?;
        Ok(Dims(dims))
    },
    |m| {
        skip_map(&mut m)?;
        Ok(Dims::other("an object"))
    },
    |_v| { Dims::other("a string") }
);

/// `data_offsets`: exactly two non-negative integers.
struct Offsets(Result<(u64, u64), String>);

impl Offsets {
    fn from_u64(_: u64) -> Self {
        Offsets(Err("data_offsets is a number, not two".into()))
    }
    fn other(what: &'static str) -> Self {
        Offsets(Err(format!("data_offsets is {what}, not two numbers")))
    }
}

any_value!(
    Offsets,
    "two offsets",
    Offsets::other,
    |s| {
        const TWO: &str = "data_offsets must have two entries";
        let got = numbers(&mut s, 2, TWO, |v| match v {
            Num::Value(v) => Ok(v),
            Num::Other(what) => Err(format!("bad offset ({what})")),
        })?;
        Ok(Offsets(got.and_then(|g| match g.as_slice() {
            [a, b] => Ok((*a, *b)),
            _ => Err(TWO.into()),
        })))
    },
    |m| {
        skip_map(&mut m)?;
        Ok(Offsets::other("an object"))
    },
    |_v| { Offsets::other("a string") }
);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tensor entry (an object with dtype, shape and data_offsets)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                let mut e = Fields::default();
                while let Some(Text(key)) = m.next_key::<Text>()? {
                    match key.as_deref() {
                        Some("dtype") => {
                            let v = match m.next_value::<Text>()?.0 {
                                Some(t) if t.len() <= 16 => Ok(t),
                                Some(t) => Err(format!("a dtype of {} characters", t.len())),
                                None => Err("dtype is not a string".into()),
                            };
                            if e.dtype.replace(v).is_some() {
                                e.twice.get_or_insert("dtype");
                            }
                        }
                        Some("shape") => {
                            if e.shape.replace(m.next_value::<Dims>()?.0).is_some() {
                                e.twice.get_or_insert("shape");
                            }
                        }
                        Some("data_offsets") => {
                            if e.offsets.replace(m.next_value::<Offsets>()?.0).is_some() {
                                e.twice.get_or_insert("data_offsets");
                            }
                        }
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a safetensors header (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Header, A::Error> {
                let mut h = Header::default();
                let mut metadata = false;
                while let Some(key) = m.next_key::<String>()? {
                    if key == "__metadata__" {
                        if metadata {
                            return Err(A::Error::custom("__metadata__ appears twice"));
                        }
                        metadata = true;
                        h.metadata = m.next_value::<Metadata>()?.0;
                    } else {
                        // each entry is checked as it is read: a header of empty or broken
                        // entries fails at the first, before it costs memory
                        let entry = m.next_value::<Fields>()?.entry().map_err(|problem| {
                            A::Error::custom(format!("tensor '{}': {problem}", key.escape_debug()))
                        })?;
                        h.tensors.push((key, entry));
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}

/// `__metadata__`: the keys rnvp reads.
struct Metadata(BTreeMap<String, Option<String>>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the __metadata__ object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Metadata, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(Text(key)) = m.next_key::<Text>()? {
                    match key {
                        Some(k) if KEYS.contains(&k.as_str()) => {
                            let v = m.next_value::<Text>()?.0;
                            out.insert(k, v);
                        }
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Metadata(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Header, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn entries_and_metadata_read_as_written() {
        let h = parse(
            r#"{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "extra": [1, {"a": 2}]},
                "__metadata__": {"config": "{\"d\": 2}", "other": "skipped", "format": 5}}"#,
        )
        .unwrap();
        let (name, e) = &h.tensors[0];
        assert_eq!(name, "w");
        assert_eq!((&*e.dtype, &*e.shape, e.offsets), ("F32", &[2i64, 3][..], (0, 24)));
        assert_eq!(h.metadata.get("config"), Some(&Some("{\"d\": 2}".to_string())));
        assert_eq!(h.metadata.get("format"), Some(&None)); // not a string
        assert!(!h.metadata.contains_key("other"));
    }

    #[test]
    fn the_first_bad_entry_ends_the_parse_naming_its_tensor() {
        for (text, want) in [
            (
                r#"{"a": {"dtype": 3, "shape": [2], "data_offsets": [0, 8]}}"#,
                "tensor 'a': dtype is not a string",
            ),
            (
                r#"{"a": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}"#,
                "bad dimension (negative)",
            ),
            (r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}"#, "two entries"),
            (
                r#"{"b": {"dtype": "F32", "shape": "x", "data_offsets": [0, 8]}}"#,
                "tensor 'b': shape is a string",
            ),
            (r#"{"c": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]}}"#, "fraction"),
            (r#"{"c": {"dtype": "F32", "shape": [2], "data_offsets": [0, "1"]}}"#, "bad offset (a string)"),
            (
                r#"{"d": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 8]}}"#,
                "bad dimension 18446744073709551615",
            ),
            (r#"{"e": {}}"#, "tensor 'e': no dtype"),
            (
                r#"{"f": {"dtype": "F64", "dtype": "F32", "shape": [], "data_offsets": [0, 4]}}"#,
                "dtype appears twice",
            ),
            (r#"{"__metadata__": {}, "__metadata__": {}}"#, "__metadata__ appears twice"),
            (r#"{"w": 3}"#, "invalid type"),
            (r#"[1]"#, "invalid type"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn long_arrays_are_consumed_not_stored() {
        let many = format!(
            r#"{{"w": {{"dtype": "F32", "shape": [{}0], "data_offsets": [0, 0]}}}}"#,
            "0,".repeat(100_000)
        );
        let err = parse(&many).unwrap_err();
        assert!(err.contains(&format!("more than {MAX_DIMS} dimensions")), "{err}");
    }
}
