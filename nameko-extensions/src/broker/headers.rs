//! Message headers as an owned, typed value with a fixed JSON ↔ AMQP mapping.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

/// One AMQP field value, with the type letter it travels as.
///
/// From JSON ([`FieldValue::from_json`]): bool → `t`, an integer that fits 32 bits → `I`,
/// any other integer → `l`, a float → `d`, a string → `S`, a list → `A`, a map → `F`,
/// null → `V`. Every other type can arrive from a broker; [`FieldValue::to_json`] gives
/// each a fixed JSON form: the integer types as numbers, `f` as a number, `D` (decimal)
/// as a string of its decimal value, `T` (timestamp) as its seconds since the epoch,
/// `x` (bytes) as a list of byte values.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ's short int)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l` (py-amqp writes 64-bit integers as `L`; both read as this)
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: `value / 10^scale`
    Decimal {
        /// Digits after the decimal point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// `S` (and the short string `s` of the 0-9-1 spec)
    String(String),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(Headers),
    /// `x`
    Bytes(Vec<u8>),
    /// `V`
    Void,
}

impl FieldValue {
    /// The AMQP type letter this value is written with.
    pub fn type_letter(&self) -> char {
        match self {
            Self::Bool(_) => 't',
            Self::I8(_) => 'b',
            Self::U8(_) => 'B',
            Self::I16(_) => 's',
            Self::U16(_) => 'u',
            Self::I32(_) => 'I',
            Self::U32(_) => 'i',
            Self::I64(_) => 'l',
            Self::F32(_) => 'f',
            Self::F64(_) => 'd',
            Self::Decimal { .. } => 'D',
            Self::String(_) => 'S',
            Self::Array(_) => 'A',
            Self::Timestamp(_) => 'T',
            Self::Table(_) => 'F',
            Self::Bytes(_) => 'x',
            Self::Void => 'V',
        }
    }

    /// The field value of a JSON value, by the fixed mapping.
    pub fn from_json(value: &Value) -> Self {
        match value {
            Value::Null => Self::Void,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    i32::try_from(i).map_or(Self::I64(i), Self::I32)
                } else if let Some(u) = n.as_u64() {
                    // Beyond i64: no AMQP integer holds it; keep the magnitude as a double.
                    Self::F64(u as f64)
                } else {
                    Self::F64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Self::String(s.clone()),
            Value::Array(items) => Self::Array(items.iter().map(Self::from_json).collect()),
            Value::Object(map) => Self::Table(Headers::from_json_map(map)),
        }
    }

    /// The JSON form of the value, by the fixed mapping.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Bool(b) => Value::Bool(*b),
            Self::I8(i) => Value::from(*i),
            Self::U8(i) => Value::from(*i),
            Self::I16(i) => Value::from(*i),
            Self::U16(i) => Value::from(*i),
            Self::I32(i) => Value::from(*i),
            Self::U32(i) => Value::from(*i),
            Self::I64(i) => Value::from(*i),
            Self::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
            Self::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Self::Decimal { scale, value } => Value::String(decimal_string(*scale, *value)),
            Self::String(s) => Value::String(s.clone()),
            Self::Array(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            Self::Timestamp(t) => Value::from(*t),
            Self::Table(t) => Value::Object(t.to_json_map()),
            Self::Bytes(b) => Value::Array(b.iter().map(|b| Value::from(*b)).collect()),
            Self::Void => Value::Null,
        }
    }
}

fn decimal_string(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// A header table: names to [`FieldValue`]s, sorted by name (as lapin writes them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    fields: BTreeMap<String, FieldValue>,
}

impl Headers {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field.
    pub fn insert(&mut self, name: impl Into<String>, value: FieldValue) {
        self.fields.insert(name.into(), value);
    }

    /// Sets a field from JSON, by the fixed mapping.
    pub fn insert_json(&mut self, name: impl Into<String>, value: &Value) {
        self.insert(name, FieldValue::from_json(value));
    }

    /// The field `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.fields.get(name)
    }

    /// Removes the field `name`.
    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        self.fields.remove(name)
    }

    /// Every field, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// A table from a JSON object.
    pub fn from_json_map(map: &Map<String, Value>) -> Self {
        Self {
            fields: map.iter().map(|(k, v)| (k.clone(), FieldValue::from_json(v))).collect(),
        }
    }

    /// The table as a JSON object.
    pub fn to_json_map(&self) -> Map<String, Value> {
        self.fields.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
    }
}

impl FromIterator<(String, FieldValue)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, FieldValue)>>(iter: I) -> Self {
        Self {
            fields: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_to_amqp_letters() {
        let cases = [
            (json!(true), 't'),
            (json!(7), 'I'),
            (json!(-2_147_483_648_i64), 'I'),
            (json!(2_147_483_648_i64), 'l'),
            (json!(1.5), 'd'),
            (json!("x"), 'S'),
            (json!([1]), 'A'),
            (json!({"a": 1}), 'F'),
            (json!(null), 'V'),
        ];
        for (value, letter) in cases {
            assert_eq!(FieldValue::from_json(&value).type_letter(), letter, "{value}");
            assert_eq!(FieldValue::from_json(&value).to_json(), value);
        }
    }

    #[test]
    fn incoming_types_have_json_forms() {
        assert_eq!(FieldValue::Decimal { scale: 2, value: 1234 }.to_json(), json!("12.34"));
        assert_eq!(FieldValue::Decimal { scale: 3, value: 5 }.to_json(), json!("0.005"));
        assert_eq!(FieldValue::Timestamp(1_700_000_000).to_json(), json!(1_700_000_000));
        assert_eq!(FieldValue::Bytes(vec![1, 255]).to_json(), json!([1, 255]));
        assert_eq!(FieldValue::I16(-3).to_json(), json!(-3));
    }
}
