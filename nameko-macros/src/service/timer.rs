//! `#[timer(interval = "30s", eager = false, missed = "burst", cluster_singleton = false)]`
//! and `#[timer(cron = "0 */5 * * * *", tz = "Europe/Paris")]`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::{Attribute, Expr, ExprLit, Lit, LitBool, LitInt, LitStr, spanned::Spanned};

use super::method::Method;
use crate::{
    args::{self, Seen},
    ctxt::Ctxt,
};

pub(crate) struct TimerAttr {
    pub(crate) attr: Attribute,
    schedule: Schedule,
    eager: Option<LitBool>,
    missed: Option<(LitStr, &'static str)>,
    cluster_singleton: Option<LitBool>,
    max_workers: Option<LitInt>,
}

enum Schedule {
    /// The interval in nanoseconds, and where it was written.
    Interval(u64, Span),
    Cron {
        expression: LitStr,
        tz: Option<LitStr>,
    },
}

const KEYS: &[&str] = &[
    "interval",
    "cron",
    "tz",
    "eager",
    "missed",
    "cluster_singleton",
    "max_workers",
];
const USAGE: &str = "write #[timer(interval = \"30s\")] or #[timer(cron = \"0 */5 * * * *\")]";

pub(crate) fn parse(attr: &Attribute) -> syn::Result<TimerAttr> {
    let list = attr
        .meta
        .require_list()
        .map_err(|err| syn::Error::new(err.span(), USAGE))?;
    let mut interval = None;
    let mut cron: Option<LitStr> = None;
    let mut tz: Option<LitStr> = None;
    let mut eager = None;
    let mut missed = None;
    let mut cluster_singleton = None;
    let mut max_workers = None;
    let mut seen = Seen::default();
    for kv in args::parse_list(list.tokens.clone())? {
        seen.first(&kv)?;
        match kv.name().as_str() {
            "interval" => interval = Some(interval_nanos(&kv.expr()?)?),
            "cron" => {
                let lit = kv.str()?;
                check_cron(&lit)?;
                cron = Some(lit);
            }
            "tz" => {
                let lit = kv.str()?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new_spanned(
                        &lit,
                        "`tz` names a time zone, e.g. \"Europe/Paris\"",
                    ));
                }
                tz = Some(lit);
            }
            "eager" => eager = Some(kv.bool()?),
            "missed" => {
                let lit = kv.str()?;
                let variant = match lit.value().as_str() {
                    "burst" => "Burst",
                    "skip" => "Skip",
                    other => {
                        return Err(syn::Error::new_spanned(
                            &lit,
                            format!("unknown missed-tick policy `{other}`; expected \"burst\" or \"skip\""),
                        ));
                    }
                };
                missed = Some((lit, variant));
            }
            "cluster_singleton" => cluster_singleton = Some(kv.bool()?),
            "max_workers" => max_workers = Some(kv.max_workers()?),
            _ => return Err(args::unknown_key(&kv, "timer", KEYS)),
        }
    }
    let schedule = match (interval, cron) {
        (Some(_), Some(cron)) => {
            return Err(syn::Error::new_spanned(
                cron,
                "a #[timer] has either `interval` or `cron`, not both",
            ));
        }
        (None, None) => {
            return Err(syn::Error::new_spanned(
                attr,
                format!("a #[timer] needs a schedule: {USAGE}"),
            ));
        }
        (Some((nanos, span)), None) => {
            if let Some(tz) = tz {
                return Err(syn::Error::new_spanned(
                    tz,
                    "`tz` applies to cron timers only: interval timers run on elapsed time",
                ));
            }
            Schedule::Interval(nanos, span)
        }
        (None, Some(expression)) => {
            if let Some(eager) = &eager {
                return Err(syn::Error::new_spanned(
                    eager,
                    "`eager` applies to interval timers only",
                ));
            }
            if let Some((lit, _)) = &missed {
                return Err(syn::Error::new_spanned(
                    lit,
                    "`missed` applies to interval timers only: a cron timer skips the ticks that fall while one runs",
                ));
            }
            Schedule::Cron { expression, tz }
        }
    };
    Ok(TimerAttr {
        attr: attr.clone(),
        schedule,
        eager,
        missed,
        cluster_singleton,
        max_workers,
    })
}

/// `interval = "30s"`, `interval = 30` or `interval = 0.5`, in nanoseconds.
fn interval_nanos(value: &Expr) -> syn::Result<(u64, Span)> {
    const FORMS: &str = "write a number of seconds (`interval = 30`, `interval = 0.5`) or a string with a unit: \
                         \"500ms\", \"30s\", \"5m\", \"1h\"";
    let Expr::Lit(ExprLit { lit, .. }) = value else {
        return Err(syn::Error::new_spanned(
            value,
            format!("`interval` takes a literal: {FORMS}"),
        ));
    };
    let (seconds, span) = match lit {
        Lit::Str(s) => (
            parse_interval(&s.value()).map_err(|why| {
                syn::Error::new_spanned(s, format!("invalid interval `{}`: {why}; {FORMS}", s.value()))
            })?,
            s.span(),
        ),
        Lit::Int(i) => (i.base10_parse::<f64>()?, i.span()),
        Lit::Float(f) => (f.base10_parse::<f64>()?, f.span()),
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!("`interval` takes a number or a string: {FORMS}"),
            ));
        }
    };
    if !seconds.is_finite() || seconds > 1e12 {
        return Err(syn::Error::new(span, format!("the interval is too long; {FORMS}")));
    }
    if seconds < 0.001 {
        return Err(syn::Error::new(span, "the interval must be at least 1ms"));
    }
    // Whole milliseconds stay exact; the rest rounds to the nanosecond.
    let nanos = (seconds * 1e9).round();
    Ok((nanos as u64, span))
}

/// The interval grammar of `nameko_extensions::timer::parse_interval`, in seconds.
pub(crate) fn parse_interval(text: &str) -> Result<f64, &'static str> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err("it does not start with a number");
    }
    let value: f64 = number.parse().map_err(|_| "the number does not parse")?;
    let scale = match unit.trim_start() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err("unknown unit"),
    };
    Ok(value * scale)
}

/// What the macro can tell of a cron expression: six or seven fields. The rest is
/// checked at setup, naming the method and the expression.
fn check_cron(lit: &LitStr) -> syn::Result<()> {
    let value = lit.value();
    let fields = value.split_whitespace().count();
    if fields == 6 || fields == 7 {
        return Ok(());
    }
    Err(syn::Error::new_spanned(
        lit,
        format!(
            "a cron expression has six fields with seconds first (\"0 */5 * * * *\": every five minutes), or seven \
             with a year; `{value}` has {fields}"
        ),
    ))
}

impl TimerAttr {
    pub(crate) fn span_tokens(&self) -> TokenStream {
        self.attr.to_token_stream()
    }

    /// The schedule as `inspect` shows it: `every 30s`, `cron 0 */5 * * * * (Europe/Paris)`.
    pub(crate) fn detail(&self) -> String {
        let mut text = match &self.schedule {
            Schedule::Interval(nanos, _) => {
                let secs = std::time::Duration::from_nanos(*nanos).as_secs_f64();
                format!("every {secs}s")
            }
            Schedule::Cron { expression, tz } => match tz {
                Some(tz) => format!("cron {} ({})", expression.value(), tz.value()),
                None => format!("cron {} (UTC)", expression.value()),
            },
        };
        if self.cluster_singleton.as_ref().is_some_and(LitBool::value) {
            text.push_str(", cluster singleton");
        }
        text
    }

    /// `entrypoints.add("tick", TimerEntrypoint..., handler)`.
    pub(crate) fn expand(&self, cx: &Ctxt, method: &Method, p: &TokenStream, name: &LitStr) -> Option<TokenStream> {
        if let Some(first) = method.params.first() {
            cx.error_spanned_by(
                &first.ty,
                format!(
                    "a #[timer] method takes no parameters after `&self`, found {}",
                    method.params.len()
                ),
            );
            return None;
        }
        let span = self.attr.span();
        let timer = match &self.schedule {
            Schedule::Interval(nanos, span) => quote_spanned! {*span=>
                #p::TimerEntrypoint::interval(::core::time::Duration::from_nanos(#nanos))
            },
            Schedule::Cron { expression, tz } => {
                let tz = tz.iter();
                quote_spanned! {span=> #p::timer_cron!(#expression #(, #tz)*) }
            }
        };
        let mut options = Vec::new();
        if let Some(eager) = &self.eager {
            options.push(quote!(.eager(#eager)));
        }
        if let Some((lit, variant)) = &self.missed {
            let variant = syn::Ident::new(variant, lit.span());
            options.push(quote!(.missed(#p::MissedTicks::#variant)));
        }
        if let Some(singleton) = &self.cluster_singleton {
            options.push(quote!(.cluster_singleton(#singleton)));
        }
        options.push(super::entrypoint::limit(self.max_workers.as_ref()));
        let ident = &method.ident;
        let ret = &method.ret;
        let into_result = args::respan(quote!(<#ret as #p::HandlerResult>::into_result), method.ret_span);
        // The tick's value, if any, is dropped: a timer has no caller.
        let handler = quote_spanned! {method.ret_span=>
            |worker: Self, (): ()| async move {
                #into_result(worker.#ident().await).map(|_| ())
            }
        };
        let add = quote_spanned! {method.ret_span=> entrypoints.add };
        Some(quote! {
            #add(#name, #timer #( #options )*, #handler);
        })
    }
}
