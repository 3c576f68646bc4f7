//! What an entrypoint method looks like: `async fn name(&self, a: A, ...) -> R`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{FnArg, Ident, LitStr, Pat, ReturnType, Signature, Type, ext::IdentExt, spanned::Spanned};

use crate::{args, ctxt::Ctxt};

/// One parameter after `&self`.
pub(crate) struct Param {
    /// Its name on the wire (keyword arguments): the binding without a leading `_`,
    /// or `#[arg(name = "...")]`.
    pub(crate) wire: LitStr,
    pub(crate) ty: Type,
}

impl Param {
    /// Whether the parameter may be omitted: its type's last segment is `Option`.
    pub(crate) fn is_optional(&self) -> bool {
        match &self.ty {
            Type::Path(path) if path.qself.is_none() => path
                .path
                .segments
                .last()
                .is_some_and(|segment| segment.ident == "Option"),
            _ => false,
        }
    }
}

/// A checked entrypoint method.
pub(crate) struct Method {
    pub(crate) ident: Ident,
    pub(crate) params: Vec<Param>,
    /// The return type; `()` spanned at the name when there is none.
    pub(crate) ret: TokenStream,
    pub(crate) ret_span: Span,
}

impl Method {
    /// The parameters' names as callers give them.
    pub(crate) fn wire_names(&self) -> Vec<String> {
        self.params.iter().map(|param| param.wire.value()).collect()
    }

    /// Reads `sig`, reporting every rule it breaks.
    pub(crate) fn check(cx: &Ctxt, sig: &Signature, mut renames: Vec<Option<LitStr>>, patterns: bool) -> Option<Self> {
        let mut ok = true;
        let mut fail = |tokens: &dyn quote::ToTokens, message: &str| {
            cx.error_spanned_by(tokens.to_token_stream(), message);
            ok = false;
        };
        if sig.asyncness.is_none() {
            fail(&sig.fn_token, "entrypoint methods must be `async fn`");
        }
        if !sig.generics.params.is_empty() {
            fail(&sig.generics, "entrypoint methods cannot be generic");
        }
        if let Some(variadic) = &sig.variadic {
            fail(variadic, "entrypoint methods cannot be variadic");
        }
        let mut inputs = sig.inputs.iter();
        match sig.inputs.first() {
            Some(FnArg::Receiver(receiver)) => {
                inputs.next();
                if receiver.reference.is_none() || receiver.colon_token.is_some() {
                    fail(
                        receiver,
                        "entrypoint methods take `&self`: the worker is dropped after the call",
                    );
                } else if receiver.mutability.is_some() {
                    fail(
                        receiver,
                        "entrypoint methods take `&self`, not `&mut self`: keep per-call state in locals, shared state in a dependency",
                    );
                }
            }
            _ => fail(
                &sig.ident,
                "entrypoint methods take `&self` first: `async fn name(&self, ...)`",
            ),
        }
        renames.resize(sig.inputs.len(), None);
        let mut params = Vec::new();
        for (arg, rename) in inputs.zip(renames.into_iter().skip(1)) {
            let FnArg::Typed(typed) = arg else { continue };
            let ident = match &*typed.pat {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => pat.ident.clone(),
                // #[http] parameters are extractors, often destructured: `Path(id): Path<u64>`.
                _ if patterns => Ident::new("_", typed.pat.span()),
                other => {
                    fail(
                        other,
                        "entrypoint parameters must be plain names (`name: Type`, or `_name: Type`), not patterns",
                    );
                    continue;
                }
            };
            let wire = rename.unwrap_or_else(|| {
                let name = ident.unraw().to_string();
                let trimmed = name.trim_start_matches('_');
                let wire = if trimmed.is_empty() { name.as_str() } else { trimmed };
                LitStr::new(wire, ident.span())
            });
            params.push(Param {
                wire,
                ty: (*typed.ty).clone(),
            });
        }
        let (ret, ret_span) = match &sig.output {
            ReturnType::Type(_, ty) => (quote!(#ty), ty.span()),
            ReturnType::Default => {
                let span = sig.ident.span();
                (quote_spanned!(span=> ()), span)
            }
        };
        ok.then(|| Self {
            ident: sig.ident.clone(),
            params,
            ret,
            ret_span,
        })
    }

    /// Asserts the return type is a `HandlerResult`, at the return type.
    pub(crate) fn assert_result(&self) -> TokenStream {
        let ret = &self.ret;
        quote_spanned! {self.ret_span=> let _ = __assert_result::<#ret>; }
    }

    /// `<Ret as HandlerResult>::Ok`.
    pub(crate) fn ok_type(&self, p: &TokenStream) -> TokenStream {
        let ret = &self.ret;
        args::respan(quote!(<#ret as #p::HandlerResult>::Ok), self.ret_span)
    }

    /// The handler: `|w: Self, req: Req| async move { into_result(w.method(<call args>).await) }`.
    pub(crate) fn handler(&self, p: &TokenStream, req: TokenStream, call_args: TokenStream) -> TokenStream {
        let ident = &self.ident;
        let ret = &self.ret;
        let into_result = args::respan(quote!(<#ret as #p::HandlerResult>::into_result), self.ret_span);
        quote_spanned! {self.ret_span=>
            |worker: Self, #req| async move {
                #into_result(worker.#ident(#call_args).await)
            }
        }
    }
}

/// Reads and strips `#[arg(name = "...")]` from every parameter: one entry per input.
pub(crate) fn take_arg_attrs(cx: &Ctxt, sig: &mut Signature) -> Vec<Option<LitStr>> {
    sig.inputs
        .iter_mut()
        .map(|arg| {
            let FnArg::Typed(typed) = arg else { return None };
            let mut rename = None;
            typed.attrs.retain(|attr| {
                if !attr.path().is_ident("arg") {
                    return true;
                }
                let kvs = attr
                    .meta
                    .require_list()
                    .and_then(|list| args::parse_list(list.tokens.clone()));
                if let Some(kvs) = cx.ok(kvs) {
                    for kv in kvs {
                        match kv.name().as_str() {
                            "name" => rename = cx.ok(kv.str()),
                            _ => cx.syn_error(args::unknown_key(&kv, "arg", &["name"])),
                        }
                    }
                }
                false
            });
            rename
        })
        .collect()
}
