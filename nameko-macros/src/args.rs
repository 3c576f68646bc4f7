//! Attribute arguments: `key = value` lists shared by every macro.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use syn::{
    Expr, ExprLit, Ident, Lit, LitBool, LitInt, LitStr, Path, Token,
    ext::IdentExt,
    parse::{Parse, ParseStream, Parser},
    punctuated::Punctuated,
};

/// One `key`, `key = value` or `key(...)` item of an attribute.
pub(crate) struct KeyValue {
    pub(crate) key: Ident,
    pub(crate) value: Option<Expr>,
    /// The tokens inside `key(...)`.
    pub(crate) list: Option<TokenStream>,
}

impl Parse for KeyValue {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `crate` and `type` are keywords; they are fine as keys.
        let key = Ident::parse_any(input)?;
        let (mut value, mut list) = (None, None);
        if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            value = Some(input.parse()?);
        } else if input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            list = Some(content.parse()?);
        }
        Ok(Self { key, value, list })
    }
}

impl KeyValue {
    /// The key as written.
    pub(crate) fn name(&self) -> String {
        self.key.unraw().to_string()
    }

    fn value_or_err(&self) -> syn::Result<&Expr> {
        if self.list.is_some() {
            return Err(syn::Error::new(
                self.key.span(),
                format!("`{}` takes a value, not a list: `{} = ...`", self.name(), self.name()),
            ));
        }
        self.value.as_ref().ok_or_else(|| {
            syn::Error::new(
                self.key.span(),
                format!("`{}` needs a value: `{} = ...`", self.name(), self.name()),
            )
        })
    }

    fn lit(&self) -> syn::Result<&Lit> {
        match self.value_or_err()? {
            Expr::Lit(ExprLit { lit, .. }) => Ok(lit),
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{}` takes a literal value", self.name()),
            )),
        }
    }

    /// The value as a string literal.
    pub(crate) fn str(&self) -> syn::Result<LitStr> {
        match self.lit()? {
            Lit::Str(lit) => Ok(lit.clone()),
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{}` takes a string: `{} = \"...\"`", self.name(), self.name()),
            )),
        }
    }

    /// The value as an array of string literals: `key = ["a", "b"]`.
    pub(crate) fn str_list(&self) -> syn::Result<Vec<LitStr>> {
        let usage = || {
            format!(
                "`{}` takes a list of strings: `{} = [\"a\", \"b\"]`",
                self.name(),
                self.name()
            )
        };
        let Expr::Array(array) = self.value_or_err()? else {
            return Err(syn::Error::new_spanned(self.value_or_err()?, usage()));
        };
        array
            .elems
            .iter()
            .map(|elem| match elem {
                Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit.clone()),
                other => Err(syn::Error::new_spanned(other, usage())),
            })
            .collect()
    }

    /// The value as a boolean literal.
    pub(crate) fn bool(&self) -> syn::Result<LitBool> {
        match self.lit()? {
            Lit::Bool(lit) => Ok(lit.clone()),
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{}` takes `true` or `false`", self.name()),
            )),
        }
    }

    /// The value as an integer literal.
    pub(crate) fn int(&self) -> syn::Result<LitInt> {
        match self.lit()? {
            Lit::Int(lit) => Ok(lit.clone()),
            other => Err(syn::Error::new_spanned(
                other,
                format!("`{}` takes an integer", self.name()),
            )),
        }
    }

    /// `max_workers = N`: a whole number of at least 1, as a `usize` literal.
    pub(crate) fn max_workers(&self) -> syn::Result<LitInt> {
        let lit = self.int()?;
        let n: usize = lit.base10_parse().map_err(|_| {
            syn::Error::new_spanned(
                &lit,
                "`max_workers` takes a whole number of workers, e.g. `max_workers = 4`",
            )
        })?;
        if n == 0 {
            return Err(syn::Error::new_spanned(
                &lit,
                "`max_workers` must be at least 1: 0 would never run a worker",
            ));
        }
        Ok(LitInt::new(&format!("{n}usize"), lit.span()))
    }

    /// Any literal, as the string a provider argument holds (`5` → `"5"`).
    pub(crate) fn lit_as_string(&self) -> syn::Result<String> {
        Ok(match self.lit()? {
            Lit::Str(lit) => lit.value(),
            Lit::Int(lit) => lit.base10_digits().to_owned(),
            Lit::Float(lit) => lit.base10_digits().to_owned(),
            Lit::Bool(lit) => lit.value.to_string(),
            Lit::Char(lit) => lit.value().to_string(),
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    format!("`{}` takes a string, number or boolean", self.name()),
                ));
            }
        })
    }

    /// The items of `key(a = 1, b = "x")`; `usage` says how to write it.
    pub(crate) fn nested(&self, usage: &str) -> syn::Result<Vec<KeyValue>> {
        match &self.list {
            Some(tokens) => parse_list(tokens.clone()),
            None => Err(syn::Error::new(
                self.key.span(),
                format!("`{}` takes a list: {usage}", self.name()),
            )),
        }
    }

    /// A key with no value (`expected`).
    pub(crate) fn flag(&self) -> syn::Result<()> {
        if self.list.is_some() {
            return Err(syn::Error::new(
                self.key.span(),
                format!("`{}` is a flag: write it without a list", self.name()),
            ));
        }
        match &self.value {
            None => Ok(()),
            Some(value) => Err(syn::Error::new_spanned(
                value,
                format!("`{}` is a flag: write it without a value", self.name()),
            )),
        }
    }

    /// The value as a path written in a string: `crate = "my::nameko"`.
    pub(crate) fn path(&self) -> syn::Result<Path> {
        self.str()?.parse()
    }

    /// The value as an expression.
    pub(crate) fn expr(&self) -> syn::Result<Expr> {
        self.value_or_err().cloned()
    }
}

/// Parses a comma-separated `key = value` list.
pub(crate) fn parse_list(tokens: TokenStream) -> syn::Result<Vec<KeyValue>> {
    let list = Punctuated::<KeyValue, Token![,]>::parse_terminated.parse2(tokens)?;
    Ok(list.into_iter().collect())
}

/// Parses the rest of `input` as a `key = value` list.
pub(crate) fn parse_rest(input: ParseStream<'_>) -> syn::Result<Vec<KeyValue>> {
    let list = Punctuated::<KeyValue, Token![,]>::parse_terminated(input)?;
    Ok(list.into_iter().collect())
}

/// `unknown key `x` in `#[rpc]`; expected one of: `name``.
pub(crate) fn unknown_key(kv: &KeyValue, attr: &str, valid: &[&str]) -> syn::Error {
    let valid: Vec<String> = valid.iter().map(|v| format!("`{v}`")).collect();
    syn::Error::new(
        kv.key.span(),
        format!(
            "unknown key `{}` in `#[{attr}]`; expected one of: {}",
            kv.name(),
            valid.join(", ")
        ),
    )
}

/// Tracks the keys of one attribute and rejects a key given twice.
#[derive(Default)]
pub(crate) struct Seen(HashSet<String>);

impl Seen {
    pub(crate) fn first(&mut self, kv: &KeyValue) -> syn::Result<()> {
        if self.0.insert(kv.name()) {
            Ok(())
        } else {
            Err(syn::Error::new(
                kv.key.span(),
                format!("`{}` is given twice", kv.name()),
            ))
        }
    }
}

/// `::nameko`, or the path of a `crate = "..."` override.
pub(crate) fn default_crate() -> Path {
    syn::parse_quote!(::nameko)
}

/// `tokens` with every span set to `span`, so an error about the whole expression
/// points at the user's code (a `quote_spanned!` leaves interpolated paths alone).
pub(crate) fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let proc_macro2::TokenTree::Group(group) = &tree {
                let mut new = proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                tree = proc_macro2::TokenTree::Group(new);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}
