//! `#[on_start]` and `#[on_stop]`: a service's start and stop hooks, methods
//! `async fn name(&self) -> Result<(), E>` run on a worker of their own
//! (`nameko_core::Lifecycle`).

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::{Attribute, FnArg, Meta, ReturnType, Signature, spanned::Spanned};

use super::entrypoint::EntrypointAttr;
use crate::ctxt::Ctxt;

/// One hook attribute on a method.
pub(crate) struct HookAttr {
    attr: Attribute,
    /// `on_start` or `on_stop`.
    kind: &'static str,
}

const NAMES: &[&str] = &["on_start", "on_stop"];

/// Reads and strips `#[on_start]`/`#[on_stop]` from `attrs`.
pub(crate) fn take(cx: &Ctxt, attrs: &mut Vec<Attribute>) -> Vec<HookAttr> {
    let mut out: Vec<HookAttr> = Vec::new();
    attrs.retain(|attr| {
        let Some(kind) = NAMES.iter().copied().find(|n| attr.path().is_ident(n)) else {
            return true;
        };
        if !matches!(attr.meta, Meta::Path(_)) {
            cx.error_spanned_by(attr, format!("#[{kind}] takes no arguments"));
        } else if out.iter().any(|seen| seen.kind == kind) {
            cx.error_spanned_by(attr, format!("#[{kind}] is given twice"));
        } else {
            out.push(HookAttr {
                attr: attr.clone(),
                kind,
            });
        }
        false
    });
    out
}

/// Checks the method and returns the registrations (`hooks.on_start("name", ...)`) and
/// the return-type assertions, or nothing after reporting what is wrong.
pub(crate) fn expand(
    cx: &Ctxt,
    hooks: &[HookAttr],
    entrypoints: &[EntrypointAttr],
    sig: &Signature,
    p: &TokenStream,
) -> Option<TokenStream> {
    let first = &hooks[0];
    let kind = first.kind;
    let mut ok = true;
    let mut fail = |tokens: &dyn ToTokens, message: String| {
        cx.error_spanned_by(tokens.to_token_stream(), message);
        ok = false;
    };
    if !entrypoints.is_empty() {
        fail(
            &first.attr,
            format!("#[{kind}] marks a hook, not an entrypoint: it cannot be combined with entrypoint attributes"),
        );
    }
    if sig.asyncness.is_none() {
        fail(&sig.fn_token, format!("#[{kind}] methods must be `async fn`"));
    }
    if !sig.generics.params.is_empty() {
        fail(&sig.generics, format!("#[{kind}] methods cannot be generic"));
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() && receiver.colon_token.is_none() => {}
        Some(FnArg::Receiver(receiver)) => fail(receiver, format!("#[{kind}] methods take `&self`")),
        _ => fail(
            &sig.ident,
            format!("#[{kind}] methods take `&self`: `async fn {}(&self)`", sig.ident),
        ),
    }
    if let Some(extra) = sig.inputs.iter().nth(1) {
        fail(
            extra,
            format!("#[{kind}] methods take only `&self`: what they need comes from the service's dependencies"),
        );
    }
    if !ok {
        return None;
    }
    let ident = &sig.ident;
    let name = ident.to_string();
    let (ret, span) = match &sig.output {
        ReturnType::Type(_, ty) => (quote!(#ty), ty.span()),
        ReturnType::Default => (quote_spanned!(sig.ident.span()=> ()), sig.ident.span()),
    };
    let mut out = quote_spanned! {span=>
        let _ = __assert_result::<#ret>;
    };
    for hook in hooks {
        let register = syn::Ident::new(hook.kind, hook.attr.span());
        out.extend(quote_spanned! {span=>
            hooks.#register(#name, |worker: Self| async move {
                <#ret as #p::HandlerResult>::into_result(worker.#ident().await).map(|_| ())
            });
        });
    }
    Some(out)
}
