//! The safetensors header, read as it streams by: each tensor entry straight into a small struct
//! (a dtype name, at most [`MAX_DIMS`] dimensions, two offsets), the metadata keys rnvp uses as
//! strings, everything else skipped without being stored. A hostile header (a 100 MB `shape`
//! array, a million metadata keys) then costs about its own size in memory, never a multiple.
//! Problems within an entry are kept and reported with the tensor's name; a header that is not
//! JSON of the right shape is an error of the parser.
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// More dimensions than any tensor rnvp reads (PyTorch's own limit is 64).
pub const MAX_DIMS: usize = 64;
/// Metadata keys rnvp reads; others are skipped.
const KEYS: [&str; 5] = ["config", "scaler", "optimizer_step", "info", "format"];

/// A field's value as read, or what was wrong with it.
pub type Field<T> = Option<Result<T, String>>;

/// One tensor entry.
#[derive(Debug, Default)]
pub struct Entry {
    /// `dtype` (at most 16 characters).
    pub dtype: Field<String>,
    /// `shape`.
    pub shape: Field<Vec<i64>>,
    /// `data_offsets`.
    pub offsets: Field<(u64, u64)>,
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
        let mut dims = vec![];
        let mut problem: Option<String> = None;
        while let Some(n) = s.next_element::<Num>()? {
            if problem.is_some() {
                continue; // the rest is consumed, not stored
            }
            problem = match n {
                Num::Value(v) if v <= i64::MAX as u64 && dims.len() < MAX_DIMS => {
                    dims.push(v as i64);
                    None
                }
                Num::Value(v) if v > i64::MAX as u64 => Some(format!("bad dimension {v}")),
                Num::Value(_) => Some(format!("more than {MAX_DIMS} dimensions")),
                Num::Other(what) => Some(format!("bad dimension ({what})")),
            };
        }
        Ok(Dims(problem.map_or(Ok(dims), Err)))
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
        let mut got = vec![];
        let mut problem: Option<String> = None;
        while let Some(n) = s.next_element::<Num>()? {
            if problem.is_some() {
                continue;
            }
            match n {
                Num::Value(v) if got.len() < 2 => got.push(v),
                Num::Value(_) => problem = Some("data_offsets must have two entries".into()),
                Num::Other(what) => problem = Some(format!("bad offset ({what})")),
            }
        }
        Ok(Offsets(match (problem, got.as_slice()) {
            (Some(p), _) => Err(p),
            (None, [a, b]) => Ok((*a, *b)),
            (None, _) => Err("data_offsets must have two entries".into()),
        }))
    },
    |m| {
        skip_map(&mut m)?;
        Ok(Offsets::other("an object"))
    },
    |_v| { Offsets::other("a string") }
);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a tensor entry (an object with dtype, shape and data_offsets)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entry, A::Error> {
                let mut e = Entry::default();
                while let Some(Text(key)) = m.next_key::<Text>()? {
                    match key.as_deref() {
                        Some("dtype") => {
                            e.dtype = Some(match m.next_value::<Text>()?.0 {
                                Some(t) if t.len() <= 16 => Ok(t),
                                Some(t) => Err(format!("a dtype of {} characters", t.len())),
                                None => Err("dtype is not a string".into()),
                            })
                        }
                        Some("shape") => e.shape = Some(m.next_value::<Dims>()?.0),
                        Some("data_offsets") => e.offsets = Some(m.next_value::<Offsets>()?.0),
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
                while let Some(key) = m.next_key::<String>()? {
                    if key == "__metadata__" {
                        h.metadata = m.next_value::<Metadata>()?.0;
                    } else {
                        h.tensors.push((key, m.next_value()?));
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

    fn parse(s: &str) -> Header {
        serde_json::from_str(s).expect("a header")
    }

    #[test]
    fn entries_and_metadata_read_as_written() {
        let h = parse(
            r#"{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "extra": [1, {"a": 2}]},
                "__metadata__": {"config": "{\"d\": 2}", "other": "skipped", "format": 5}}"#,
        );
        let (name, e) = &h.tensors[0];
        assert_eq!(name, "w");
        assert_eq!(e.dtype, Some(Ok("F32".into())));
        assert_eq!(e.shape, Some(Ok(vec![2, 3])));
        assert_eq!(e.offsets, Some(Ok((0, 24))));
        assert_eq!(h.metadata.get("config"), Some(&Some("{\"d\": 2}".to_string())));
        assert_eq!(h.metadata.get("format"), Some(&None)); // not a string
        assert!(!h.metadata.contains_key("other"));
    }

    #[test]
    fn bad_fields_are_kept_as_problems() {
        let h = parse(
            r#"{"a": {"dtype": 3, "shape": [-1, 2], "data_offsets": [0]},
                "b": {"dtype": "F32F32F32F32F32F32", "shape": "x", "data_offsets": [1, 2, 3]},
                "c": {"shape": [1.5], "data_offsets": [0, "1"]},
                "d": {"shape": [18446744073709551615]}}"#,
        );
        let e = |i: usize| &h.tensors[i].1;
        assert_eq!(e(0).dtype, Some(Err("dtype is not a string".into())));
        assert_eq!(e(0).shape, Some(Err("bad dimension (negative)".into())));
        assert_eq!(e(0).offsets, Some(Err("data_offsets must have two entries".into())));
        assert!(e(1).dtype.as_ref().unwrap().is_err());
        assert_eq!(e(1).shape, Some(Err("shape is a string, not an array".into())));
        assert_eq!(e(1).offsets, Some(Err("data_offsets must have two entries".into())));
        assert!(e(2).shape.as_ref().unwrap().as_ref().unwrap_err().contains("fraction"));
        assert_eq!(e(2).offsets, Some(Err("bad offset (a string)".into())));
        assert_eq!(e(3).shape, Some(Err("bad dimension 18446744073709551615".into())));
        assert!(e(2).dtype.is_none());
    }

    #[test]
    fn long_arrays_are_consumed_not_stored() {
        let many = format!(r#"{{"w": {{"shape": [{}0]}}}}"#, "0,".repeat(100_000));
        let h = parse(&many);
        assert_eq!(h.tensors[0].1.shape, Some(Err(format!("more than {MAX_DIMS} dimensions"))));
        assert!(serde_json::from_str::<Header>(r#"{"w": 3}"#).is_err());
        assert!(serde_json::from_str::<Header>(r#"[1]"#).is_err());
    }
}
