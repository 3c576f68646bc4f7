//! The documentation `#[service]` writes for `inspect`: each entrypoint's parameters,
//! return type and doc lines, as written in the source.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::{Attribute, Expr, ExprLit, FnArg, Lit, Meta, Signature};

use super::{entrypoint::EntrypointAttr, method::Method};

/// The lines of the method's doc comment, one leading space trimmed from each.
pub(super) fn doc_lines(attrs: &[Attribute]) -> Vec<String> {
    let mut lines: Vec<String> = attrs
        .iter()
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) if nv.path.is_ident("doc") => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Some(s.value()),
                _ => None,
            },
            _ => None,
        })
        // `///` alone is `#[doc = ""]`: an empty line, kept.
        .flat_map(|text| {
            text.split('\n')
                .map(|l| l.trim_end_matches('\r').to_owned())
                .collect::<Vec<_>>()
        })
        .map(|line| line.strip_prefix(' ').map(str::to_owned).unwrap_or(line))
        .collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|l| l.trim().is_empty()) {
        lines.remove(0);
    }
    lines
}

/// Each parameter after `&self` as written: `(pattern, type)`.
pub(super) fn written_params(sig: &Signature) -> Vec<(String, String)> {
    sig.inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Typed(typed) => Some((tidy(&typed.pat.to_token_stream()), tidy(&typed.ty.to_token_stream()))),
            FnArg::Receiver(_) => None,
        })
        .collect()
}

/// `EntrypointDoc::new(..)` for `attr` on `method`.
pub(super) fn entrypoint_doc(
    p: &TokenStream,
    attr: &EntrypointAttr,
    method: &Method,
    written: &[(String, String)],
    doc: &[String],
) -> TokenStream {
    let name = attr.registered_name(method);
    let kind = attr.kind();
    let detail = attr.detail();
    // RPC-like parameters are named as callers give them (`#[arg(name)]`, no leading
    // `_`); HTTP extractors as written.
    let params: Vec<TokenStream> = if matches!(attr, EntrypointAttr::Http(_)) {
        written
            .iter()
            .map(|(pat, ty)| quote!(#p::ParamDoc::new(#pat, #ty)))
            .collect()
    } else {
        method
            .params
            .iter()
            .map(|param| {
                let wire = &param.wire;
                let ty = tidy(&param.ty.to_token_stream());
                quote!(#p::ParamDoc::new(#wire, #ty))
            })
            .collect()
    };
    let returns = tidy(&method.ret);
    let returns = if returns == "()" { String::new() } else { returns };
    quote! {
        #p::EntrypointDoc::new(#name, #kind, #detail, &[ #( #params ),* ], #returns, &[ #( #doc ),* ])
    }
}

/// Tokens as a person writes them: `Option<String>`, not `Option < String >`.
pub(super) fn tidy(tokens: &TokenStream) -> String {
    let text = tokens.to_string();
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.get(i + 1).copied();
            let glue_before = matches!(next, Some('<' | '>' | ',' | ':' | ')' | ']' | '.' | '?'));
            let glue_after = matches!(prev, Some('<' | ':' | '(' | '[' | '&' | '.'));
            let arrow = prev == Some('-') && next == Some('>');
            let call = next == Some('(') && prev.is_some_and(char::is_alphanumeric);
            if (glue_before || glue_after || call) && !arrow && prev != Some(',') {
                continue;
            }
            // `impl Trait + Send`, `dyn A`, `mut x`, `-> T`: keep.
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_read_as_written() {
        assert_eq!(tidy(&quote!(Option<String>)), "Option<String>");
        assert_eq!(tidy(&quote!(Result<Vec<u8>, my::Error>)), "Result<Vec<u8>, my::Error>");
        assert_eq!(tidy(&quote!(&'static str)), "&'static str");
        assert_eq!(tidy(&quote!(Path<(u64, String)>)), "Path<(u64, String)>");
        assert_eq!(tidy(&quote!(Json<T>)), "Json<T>");
        assert_eq!(tidy(&quote!(Box<dyn Fn(u8) -> u8>)), "Box<dyn Fn(u8) -> u8>");
    }
}
