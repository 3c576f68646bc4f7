//! A [`serde::Deserializer`] over [`ConfigValue`] trees that reports the location and key path
//! of the node where deserialization failed.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, EnumAccess, Expected, MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor,
};

use super::error::{ConfigError, ConfigErrorKind};
use super::value::{ConfigValue, Entry, Location, Node};

/// The deserializer's error: a message, located by the innermost node that saw it.
#[derive(Debug)]
pub(crate) struct DeError {
    kind: ConfigErrorKind,
    location: Option<Location>,
    path: Option<String>,
    message: String,
    expected: Option<String>,
}

impl DeError {
    fn located(kind: ConfigErrorKind, location: &Location, path: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            location: Some(location.clone()),
            path: Some(path.to_owned()),
            message: message.into(),
            expected: None,
        }
    }

    pub(crate) fn into_config_error(self) -> ConfigError {
        ConfigError::new(self.kind, self.location, self.path.unwrap_or_default(), self.message)
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            kind: ConfigErrorKind::InvalidValue,
            location: None,
            path: None,
            message: msg.to_string(),
            expected: None,
        }
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        let mut error = Self::custom(format_args!("invalid type: {unexp}, expected {exp}"));
        error.expected = Some(exp.to_string());
        error
    }
}

/// Deserializes one node; `path` is its dotted key path.
#[derive(Debug)]
pub(crate) struct ValueDe<'de> {
    value: &'de ConfigValue,
    path: String,
}

impl<'de> ValueDe<'de> {
    pub(crate) fn new(value: &'de ConfigValue, path: String) -> Self {
        Self { value, path }
    }

    /// Gives an error that no inner node has located this node's location and path.
    fn locate(&self, mut error: DeError) -> DeError {
        if error.location.is_none() {
            error.location = Some(self.value.location.clone());
            error.path = Some(self.path.clone());
            if let (Node::Null, Some(var), Some(expected)) = (&self.value.node, &self.value.unset_var, &error.expected)
            {
                error.message =
                    format!("`${{{var}}}` is unset and has no default, so the value is null; expected {expected}");
            }
        }
        error
    }

    fn child(&self, value: &'de ConfigValue, key: &str) -> Self {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        Self { value, path }
    }

    fn is_plain_null(&self) -> bool {
        matches!(self.value.node, Node::Null) && self.value.unset_var.is_none()
    }

    fn any<V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value.node {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(*b),
            Node::Int(i) => {
                if let Ok(i) = i64::try_from(*i) {
                    visitor.visit_i64(i)
                } else if let Ok(u) = u64::try_from(*i) {
                    visitor.visit_u64(u)
                } else {
                    visitor.visit_i128(*i)
                }
            }
            Node::Float(f) => visitor.visit_f64(*f),
            Node::Str(s) => visitor.visit_borrowed_str(s),
            Node::Seq(items) => self.seq(items, visitor),
            Node::Map(entries) => self.map(entries, visitor),
        }
    }

    fn seq<V: Visitor<'de>>(&self, items: &'de [ConfigValue], visitor: V) -> Result<V::Value, DeError> {
        let mut access = SeqDe {
            items: items.iter().enumerate(),
            path: &self.path,
        };
        let value = visitor.visit_seq(&mut access)?;
        let rest = access.items.len();
        if rest > 0 {
            return Err(de::Error::invalid_length(
                items.len(),
                &format!("{} elements", items.len() - rest).as_str(),
            ));
        }
        Ok(value)
    }

    fn map<V: Visitor<'de>>(&self, entries: &'de [Entry], visitor: V) -> Result<V::Value, DeError> {
        let mut access = MapDe {
            entries: entries.iter(),
            value: None,
            parent: self,
        };
        visitor.visit_map(&mut access)
    }
}

struct SeqDe<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, ConfigValue>>,
    path: &'p str,
}

impl<'de> SeqAccess<'de> for SeqDe<'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, DeError> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(ValueDe::new(value, format!("{}[{i}]", self.path)))
            .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'de, 'p> {
    entries: std::slice::Iter<'de, Entry>,
    value: Option<&'de Entry>,
    parent: &'p ValueDe<'de>,
}

impl<'de> MapAccess<'de> for MapDe<'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(entry) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(entry);
        let key = KeyDe {
            key: &entry.key,
            location: &entry.key_location,
            path: self.parent.child(&entry.value, &entry.key).path,
        };
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let entry = self
            .value
            .take()
            .expect("serde calls next_value_seed only after next_key_seed returned a key");
        seed.deserialize(self.parent.child(&entry.value, &entry.key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                self.any(visitor).map_err(|e| self.locate(e))
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ValueDe<'de> {
    type Error = DeError;

    forward_to_any! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_seq deserialize_identifier
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = if self.value.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(ValueDe::new(self.value, self.path.clone()))
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.any(visitor).map_err(|e| self.locate(e))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.any(visitor).map_err(|e| self.locate(e))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor
            .visit_newtype_struct(ValueDe::new(self.value, self.path.clone()))
            .map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.any(visitor).map_err(|e| self.locate(e))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.any(visitor).map_err(|e| self.locate(e))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = if self.is_plain_null() {
            self.map(&[], visitor)
        } else {
            self.any(visitor)
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if let Node::Map(entries) = &self.value.node
            && let Some(unknown) = entries.iter().find(|e| !fields.contains(&e.key.as_str()))
        {
            let expected = if fields.is_empty() {
                "expected no keys".to_owned()
            } else {
                let names: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
                format!("expected one of {}", names.join(", "))
            };
            return Err(DeError::located(
                ConfigErrorKind::UnknownKey,
                &unknown.key_location,
                &self.path,
                format!("unknown key `{}`, {expected}", unknown.key),
            ));
        }
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let access = match &self.value.node {
            Node::Str(s) => EnumDe {
                variant: s,
                location: &self.value.location,
                value: None,
                path: self.path.clone(),
            },
            Node::Map(entries) if entries.len() == 1 => EnumDe {
                variant: &entries[0].key,
                location: &entries[0].key_location,
                value: Some(&entries[0].value),
                path: self.child(&entries[0].value, &entries[0].key).path,
            },
            _ => {
                let unexpected = match &self.value.node {
                    Node::Map(_) => Unexpected::Other("a mapping without exactly one key"),
                    _ => unexpected(self.value),
                };
                let error: DeError = de::Error::invalid_type(
                    unexpected,
                    &"a variant name, or a mapping with one key: the variant name",
                );
                return Err(self.locate(error));
            }
        };
        visitor.visit_enum(access).map_err(|e| self.locate(e))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

fn unexpected(value: &ConfigValue) -> Unexpected<'_> {
    match &value.node {
        Node::Null => Unexpected::Unit,
        Node::Bool(b) => Unexpected::Bool(*b),
        Node::Int(i) => match i64::try_from(*i) {
            Ok(i) => Unexpected::Signed(i),
            Err(_) => Unexpected::Other("a large integer"),
        },
        Node::Float(f) => Unexpected::Float(*f),
        Node::Str(s) => Unexpected::Str(s),
        Node::Seq(_) => Unexpected::Seq,
        Node::Map(_) => Unexpected::Map,
    }
}

struct EnumDe<'de> {
    variant: &'de str,
    location: &'de Location,
    value: Option<&'de ConfigValue>,
    path: String,
}

impl<'de> EnumAccess<'de> for EnumDe<'de> {
    type Error = DeError;
    type Variant = VariantDe<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, VariantDe<'de>), DeError> {
        let key = KeyDe {
            key: self.variant,
            location: self.location,
            path: self.path.clone(),
        };
        let variant = seed.deserialize(key)?;
        Ok((
            variant,
            VariantDe {
                value: self.value,
                path: self.path,
            },
        ))
    }
}

struct VariantDe<'de> {
    value: Option<&'de ConfigValue>,
    path: String,
}

impl<'de> VariantDe<'de> {
    fn value(self, expected: &str) -> Result<ValueDe<'de>, DeError> {
        match self.value {
            Some(value) => Ok(ValueDe::new(value, self.path)),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &expected)),
        }
    }
}

impl<'de> VariantAccess<'de> for VariantDe<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.value {
            None => Ok(()),
            Some(value) if value.is_null() => Ok(()),
            Some(value) => Err(ValueDe::new(value, self.path)
                .locate(de::Error::invalid_type(unexpected(value), &"nothing (a unit variant)"))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self.value("a newtype variant")?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_tuple(self.value("a tuple variant")?, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_struct(self.value("a struct variant")?, "", fields, visitor)
    }
}

/// Deserializes a mapping key (always a string), parsing it for numeric and boolean key types.
struct KeyDe<'de> {
    key: &'de str,
    location: &'de Location,
    path: String,
}

impl KeyDe<'_> {
    fn locate(&self, mut error: DeError) -> DeError {
        if error.location.is_none() {
            error.location = Some(self.location.clone());
            error.path = Some(self.path.clone());
        }
        error
    }
}

macro_rules! parse_key {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                let result = match self.key.parse::<$ty>() {
                    Ok(value) => visitor.$visit(value),
                    Err(_) => visitor.visit_borrowed_str(self.key),
                };
                result.map_err(|e| self.locate(e))
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for KeyDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_borrowed_str(self.key).map_err(|e| self.locate(e))
    }

    parse_key! {
        deserialize_bool => bool, visit_bool;
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
        deserialize_f32 => f32, visit_f32;
        deserialize_f64 => f64, visit_f64;
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let location = self.location;
        let path = self.path.clone();
        let access = EnumDe {
            variant: self.key,
            location,
            value: None,
            path: path.clone(),
        };
        visitor.visit_enum(access).map_err(|e| {
            KeyDe {
                key: "",
                location,
                path,
            }
            .locate(e)
        })
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf option unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// Deserializes `T` from `value`, whose key path is `path`.
pub(crate) fn from_value<T: de::DeserializeOwned>(value: &ConfigValue, path: &str) -> Result<T, ConfigError> {
    T::deserialize(ValueDe::new(value, path.to_owned())).map_err(DeError::into_config_error)
}
