//! Exact f64 (de)serialisation for detector checkpoints and stored models (`#[serde(with =
//! "float_exact")]`, `float_exact::seq` for sequences, `float_exact::opt` for options).
//! serde_json's default float parser is not correctly rounded (about one value in ten comes
//! back one ulp off), which would make a restored detector or a loaded model drift from the
//! original; in human-readable formats a float is written
//! as the shortest decimal string that round-trips (`"0.1"`, `"NaN"`) and parsed by the
//! standard library, which rounds correctly. Binary formats get the plain f64. Plain JSON
//! numbers are accepted on input too.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An f64 as the shortest decimal string that round-trips.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.collect_str(&format_args!("{v:?}"))
    } else {
        s.serialize_f64(*v)
    }
}

/// An f64 from such a string, or from a plain number.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    if d.is_human_readable() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Number(f64),
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => t
                .parse()
                .map_err(|_| D::Error::custom(format!("`{t}` is not a float"))),
            Repr::Number(v) => Ok(v),
        }
    } else {
        f64::deserialize(d)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Exact(#[serde(with = "self")] f64);

/// Sequences of f64 (`Vec`, `VecDeque`).
pub mod seq {
    use super::*;

    pub fn serialize<'a, T, S>(v: &'a T, s: S) -> Result<S::Ok, S::Error>
    where
        &'a T: IntoIterator<Item = &'a f64>,
        S: Serializer,
    {
        s.collect_seq(v.into_iter().map(|x| Exact(*x)))
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromIterator<f64>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<Exact>::deserialize(d)?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }
}

/// `Option<f64>`.
pub mod opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(Exact).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<Exact>::deserialize(d)?.map(|e| e.0))
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct S {
        #[serde(with = "super")]
        one: f64,
        #[serde(with = "super::seq")]
        many: Vec<f64>,
        #[serde(with = "super::opt")]
        maybe: Option<f64>,
    }

    #[test]
    fn values_come_back_to_the_bit() {
        let s = S {
            one: 0.1 + 0.2,
            many: vec![
                1e-300,
                123_456.789_012_345_67,
                f64::NAN.copysign(1.0),
                1e22,
                -0.0,
            ],
            maybe: Some(2.0_f64.sqrt()),
        };
        let text = serde_json::to_string(&s).unwrap();
        let back: S = serde_json::from_str(&text).unwrap();
        assert_eq!(back.one.to_bits(), s.one.to_bits());
        for (a, b) in back.many.iter().zip(&s.many) {
            assert_eq!(a.to_bits(), b.to_bits(), "{text}");
        }
        assert_eq!(back.maybe.map(f64::to_bits), s.maybe.map(f64::to_bits));
        // plain numbers are read too
        let plain: S = serde_json::from_str(r#"{"one": 1, "many": [0.5], "maybe": null}"#).unwrap();
        assert_eq!((plain.one, plain.many, plain.maybe), (1.0, vec![0.5], None));
    }
}
