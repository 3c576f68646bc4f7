//! The human log format's field formatter: writes exactly what tracing-subscriber's
//! `DefaultFields` writes, with less work on the hot path.
//!
//! Every worker opens a `worker` span (service, entrypoint, call id, trace id), and the
//! fmt layer formats a span's fields when the span is created, whether anything is
//! logged in it or not. `DefaultFields` paints each field name through nu-ansi-term and
//! one `write!` of three arguments even without colours; on a small HTTP handler that
//! was a sixth of the request's instructions, half of it growing the span's string a few
//! bytes at a time. Without colours, [`LeanFields`] writes a field as `name`, `=`, then
//! the value's `Debug` — the same bytes — into a per-thread buffer, then into the span's
//! string at once. The message, errors and raw identifiers (`r#type`) go through
//! `DefaultFields`' own visitor, and everything on a colour terminal through
//! `DefaultFields` itself, so their escaping stays tracing-subscriber's.

use std::{cell::RefCell, fmt};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::{RecordFields, VisitOutput},
    fmt::{
        FormatFields,
        format::{DefaultFields, DefaultVisitor, Writer},
    },
};

/// Formats fields as `DefaultFields` does (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LeanFields;

/// Capacity past which the per-thread buffer is given back after use.
const BUFFER_KEPT: usize = 16 * 1024;

thread_local! {
    /// Where a span's fields are written first, so that the span's own string is
    /// allocated once at its final size instead of growing field by field.
    static BUFFER: RefCell<String> = RefCell::new(String::with_capacity(256));
}

impl<'w> FormatFields<'w> for LeanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        if writer.has_ansi_escapes() || !writer.sanitizes_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        BUFFER.with(|buffer| {
            // Taken already: a value's formatting logged something itself.
            let Ok(mut buffer) = buffer.try_borrow_mut() else {
                return LeanVisitor::new(writer).record_all(fields);
            };
            buffer.clear();
            LeanVisitor::new(Writer::new(&mut *buffer)).record_all(fields)?;
            let written = writer.write_str(&buffer);
            if buffer.capacity() > BUFFER_KEPT {
                *buffer = String::with_capacity(256);
            }
            written
        })
    }
}

/// [`LeanFields`]' visitor.
pub(crate) struct LeanVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl<'a> LeanVisitor<'a> {
    fn new(writer: Writer<'a>) -> Self {
        Self {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }

    fn record_all(mut self, fields: impl RecordFields) -> fmt::Result {
        fields.record(&mut self);
        self.result
    }

    /// Whether `DefaultVisitor` writes this field in a way of its own (escaping,
    /// colours, a renamed raw identifier).
    fn is_special(&self, field: &Field) -> bool {
        let name = field.name();
        name == "message" || name.starts_with("r#") || self.writer.has_ansi_escapes()
    }

    /// Lets `DefaultVisitor` write one field.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }

    fn write_plain(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let writer = &mut self.writer;
        let padded = if self.is_empty { Ok(()) } else { writer.write_char(' ') };
        self.is_empty = false;
        self.result = padded
            .and_then(|()| writer.write_str(field.name()))
            .and_then(|()| writer.write_char('='))
            .and_then(|()| write!(writer, "{value:?}"));
    }
}

impl Visit for LeanVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if self.is_special(field) {
            self.delegate(|visitor| visitor.record_str(field, value));
        } else {
            self.write_plain(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.delegate(|visitor| visitor.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if self.is_special(field) {
            self.delegate(|visitor| visitor.record_debug(field, value));
        } else {
            self.write_plain(field, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::{fmt::MakeWriter, prelude::*};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer \u{1b}[31mfailure")]
    struct Outer(#[source] std::io::Error);

    /// Logs a varied sample (spans, recorded fields, every kind of value, escapes) and
    /// returns the output.
    fn sample<N>(fields: N, ansi: bool) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(fields)
                .with_ansi(ansi)
                .without_time()
                .with_writer(captured.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "worker",
                service = %"greeting",
                call_id = %"greeting.greet.1",
                later = tracing::field::Empty,
                r#type = "rpc",
            );
            let _entered = span.enter();
            span.record("later", 42_u64);
            let error = Outer(std::io::Error::other("inner \u{1b}[0m"));
            tracing::info!(
                count = 3_i64,
                ratio = 0.5_f64,
                flag = true,
                name = "quoted \"str\"\n",
                shown = %"display",
                debug = ?vec![1, 2],
                error = &error as &(dyn std::error::Error + 'static),
                "a message with \u{1b}[31m an escape and {}",
                "an argument"
            );
            tracing::warn!("only a message");
            tracing::info!(target: "other", empty = "", "");
        });
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lean_fields_write_what_default_fields_write() {
        for ansi in [false, true] {
            let lean = sample(LeanFields, ansi);
            assert_eq!(lean, sample(DefaultFields::new(), ansi), "ansi: {ansi}");
            assert!(
                ansi || lean.contains("service=greeting call_id=greeting.greet.1"),
                "{lean}"
            );
        }
    }
}
