//! Headers and properties to and from lapin's types, by the fixed mapping of
//! [`FieldValue`].

use lapin::{
    BasicProperties,
    types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString},
};

use crate::broker::{BrokerError, FieldValue, Headers, Properties};

/// A short string (names, routing keys, property strings: at most 255 bytes).
pub(crate) fn short(what: &str, value: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(value)
        .map_err(|_| BrokerError::Other(format!("{what} is longer than 255 bytes: {value:.40}…")))
}

pub(crate) fn to_table(headers: &Headers) -> Result<FieldTable, BrokerError> {
    let mut table = FieldTable::default();
    for (name, value) in headers.iter() {
        table.insert(short("a header name", name)?, to_value(value)?);
    }
    Ok(table)
}

fn to_value(value: &FieldValue) -> Result<AMQPValue, BrokerError> {
    Ok(match value {
        FieldValue::Bool(b) => AMQPValue::Boolean(*b),
        FieldValue::I8(i) => AMQPValue::ShortShortInt(*i),
        FieldValue::U8(i) => AMQPValue::ShortShortUInt(*i),
        FieldValue::I16(i) => AMQPValue::ShortInt(*i),
        FieldValue::U16(i) => AMQPValue::ShortUInt(*i),
        FieldValue::I32(i) => AMQPValue::LongInt(*i),
        FieldValue::U32(i) => AMQPValue::LongUInt(*i),
        FieldValue::I64(i) => AMQPValue::LongLongInt(*i),
        FieldValue::F32(f) => AMQPValue::Float(*f),
        FieldValue::F64(f) => AMQPValue::Double(*f),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        FieldValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        FieldValue::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(to_value).collect::<Result<Vec<_>, _>>()?,
        )),
        FieldValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        FieldValue::Table(t) => AMQPValue::FieldTable(to_table(t)?),
        FieldValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.as_slice())),
        // `FieldValue` is non-exhaustive for users, not for this crate: every variant
        // is listed, and `Void` is the last.
        FieldValue::Void => AMQPValue::Void,
    })
}

pub(crate) fn from_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), from_value(value)))
        .collect()
}

fn from_value(value: &AMQPValue) -> FieldValue {
    match value {
        AMQPValue::Boolean(b) => FieldValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => FieldValue::I8(*i),
        AMQPValue::ShortShortUInt(i) => FieldValue::U8(*i),
        AMQPValue::ShortInt(i) => FieldValue::I16(*i),
        AMQPValue::ShortUInt(i) => FieldValue::U16(*i),
        AMQPValue::LongInt(i) => FieldValue::I32(*i),
        AMQPValue::LongUInt(i) => FieldValue::U32(*i),
        AMQPValue::LongLongInt(i) => FieldValue::I64(*i),
        AMQPValue::Float(f) => FieldValue::F32(*f),
        AMQPValue::Double(f) => FieldValue::F64(*f),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::ShortString(s) => FieldValue::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => FieldValue::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::FieldArray(items) => FieldValue::Array(items.as_slice().iter().map(from_value).collect()),
        AMQPValue::Timestamp(t) => FieldValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => FieldValue::Table(from_table(t)),
        AMQPValue::ByteArray(b) => FieldValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Void => FieldValue::Void,
    }
}

pub(crate) fn to_properties(p: &Properties) -> Result<BasicProperties, BrokerError> {
    let mut out = BasicProperties::default();
    if let Some(v) = &p.content_type {
        out = out.with_content_type(short("content_type", v)?);
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(short("content_encoding", v)?);
    }
    if let Some(v) = &p.headers {
        out = out.with_headers(to_table(v)?);
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(short("correlation_id", v)?);
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(short("reply_to", v)?);
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(short("expiration", v)?);
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(short("message_id", v)?);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(short("type", v)?);
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(short("user_id", v)?);
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(short("app_id", v)?);
    }
    Ok(out)
}

pub(crate) fn from_properties(p: &BasicProperties) -> Properties {
    let s = |v: &Option<ShortString>| v.as_ref().map(|v| v.as_str().to_owned());
    Properties {
        content_type: s(p.content_type()),
        content_encoding: s(p.content_encoding()),
        headers: p.headers().as_ref().map(from_table),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: s(p.correlation_id()),
        reply_to: s(p.reply_to()),
        expiration: s(p.expiration()),
        message_id: s(p.message_id()),
        timestamp: *p.timestamp(),
        kind: s(p.kind()),
        user_id: s(p.user_id()),
        app_id: s(p.app_id()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_headers_travel_with_their_letters() {
        let mut headers = Headers::new();
        headers.insert_json("t", &json!(true));
        headers.insert_json("i", &json!(7));
        headers.insert_json("l", &json!(5_000_000_000_i64));
        headers.insert_json("d", &json!(1.5));
        headers.insert_json("s", &json!("x"));
        headers.insert_json("a", &json!(["a", 1]));
        headers.insert_json("f", &json!({"k": null}));
        let table = to_table(&headers).expect("a table");
        let inner = table.inner();
        let get = |k: &str| inner.get(&ShortString::from(k)).expect("the field");
        assert!(matches!(get("t"), AMQPValue::Boolean(true)));
        assert!(matches!(get("i"), AMQPValue::LongInt(7)));
        assert!(matches!(get("l"), AMQPValue::LongLongInt(5_000_000_000)));
        assert!(matches!(get("d"), AMQPValue::Double(_)));
        assert!(matches!(get("s"), AMQPValue::LongString(_)));
        assert!(matches!(get("a"), AMQPValue::FieldArray(_)));
        assert!(matches!(get("f"), AMQPValue::FieldTable(_)));
        assert_eq!(from_table(&table), headers);
    }

    #[test]
    fn every_incoming_type_decodes() {
        let mut table = FieldTable::default();
        table.insert("b".into(), AMQPValue::ShortShortInt(-1));
        table.insert("s".into(), AMQPValue::ShortInt(-3));
        table.insert("ss".into(), AMQPValue::ShortString("short".into()));
        table.insert(
            "D".into(),
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 1234 }),
        );
        table.insert("T".into(), AMQPValue::Timestamp(1_700_000_000));
        table.insert("x".into(), AMQPValue::ByteArray(ByteArray::from(vec![1, 255])));
        table.insert("V".into(), AMQPValue::Void);
        let json = serde_json::Value::Object(from_table(&table).to_json_map());
        assert_eq!(
            json,
            json!({"b": -1, "s": -3, "ss": "short", "D": "12.34", "T": 1_700_000_000, "x": [1, 255], "V": null})
        );
    }

    #[test]
    fn properties_round_trip() {
        let mut headers = Headers::new();
        headers.insert_json("nameko.call_id_stack", &json!(["a.b.1"]));
        let mut p = Properties::json(headers);
        p.correlation_id = Some("c".into());
        p.reply_to = Some("r".into());
        p.expiration = Some("1000".into());
        p.timestamp = Some(5);
        p.kind = Some("k".into());
        p.app_id = Some("app".into());
        p.message_id = Some("m".into());
        assert_eq!(from_properties(&to_properties(&p).expect("properties")), p);
    }
}
