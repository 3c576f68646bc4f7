//! `#[derive(Dependencies)]`: the provider slots of a service struct, and its worker
//! factory for unit tests.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Data, DeriveInput, Expr, Fields, Ident, LitStr, Path, Type, Visibility, spanned::Spanned};

use crate::{
    args::{self, Seen},
    ctxt::Ctxt,
};

/// One field of the service struct.
struct Field {
    ident: Ident,
    ty: Type,
    /// `#[dependency(provider = ...)]`.
    provider: Option<Expr>,
    /// Every other `name = literal` of `#[dependency(...)]`.
    args: Vec<(LitStr, String)>,
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let krate = container_crate(&cx, &input);
    let name = &input.ident;

    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &input.generics,
            "#[derive(Dependencies)] does not support generic structs: a service is one concrete type",
        );
    }
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named.named.iter().collect(),
            Fields::Unit => Vec::new(),
            Fields::Unnamed(unnamed) => {
                cx.error_spanned_by(
                    unnamed,
                    "#[derive(Dependencies)] needs a struct with named fields: each field is one dependency, \
                     and its name is the slot's name",
                );
                Vec::new()
            }
        },
        Data::Enum(data) => {
            cx.error_spanned_by(data.enum_token, "#[derive(Dependencies)] only goes on structs");
            Vec::new()
        }
        Data::Union(data) => {
            cx.error_spanned_by(data.union_token, "#[derive(Dependencies)] only goes on structs");
            Vec::new()
        }
    };
    let fields: Vec<Field> = fields.into_iter().filter_map(|f| field(&cx, f)).collect();
    cx.check()?;

    let vis = &input.vis;
    // Fields of generated structs are as visible as the struct, and at least `pub(crate)`.
    let field_vis: Visibility = match vis {
        Visibility::Inherited => syn::parse_quote!(pub(crate)),
        other => other.clone(),
    };
    let providers = format_ident!("{}Providers", name);
    let factory = format_ident!("{}WorkerFactory", name);
    let p = quote!(#krate::__private);

    let idents: Vec<&Ident> = fields.iter().map(|f| &f.ident).collect();
    let names: Vec<String> = idents.iter().map(|i| i.unraw_string()).collect();
    let types: Vec<&Type> = fields.iter().map(|f| &f.ty).collect();

    let slot_docs = names.iter().map(|n| format!("Fills `{n}`."));
    let assertions = fields.iter().filter(|f| f.provider.is_none()).map(|f| {
        let ty = &f.ty;
        quote_spanned! {ty.span()=> let _ = __assert_dependency::<#ty>; }
    });
    let slots = fields.iter().map(|f| {
        let ty = &f.ty;
        let base = match &f.provider {
            Some(expr) => quote_spanned! {expr.span()=> #p::Provider::<#ty>::new(#expr) },
            None => args::respan(quote!(#p::Provider::<#ty>::of()), ty.span()),
        };
        let args = f.args.iter().map(|(key, value)| quote!(.with_arg(#key, #value)));
        quote!(#base #(#args)*)
    });

    let providers_doc = format!(
        "The provider slots of [`{name}`], one per field: what `#[derive(Dependencies)]` generates. \
         Replace a slot to fake a dependency."
    );
    let factory_doc = format!(
        "Builds a [`{name}`] worker for unit tests: set the fields you need, the others take their \
         type's test default (`Dependency::test_default`)."
    );
    let factory_fn_doc =
        format!("A [`{factory}`]: build a [`{name}`] worker in a unit test, with fakes for the fields you set.");
    let setters = fields.iter().map(|f| {
        let ident = &f.ident;
        let ty = &f.ty;
        let doc = format!("Sets `{}`.", ident.unraw_string());
        quote! {
            #[doc = #doc]
            #vis fn #ident(mut self, value: #ty) -> Self {
                self.#ident = ::core::option::Option::Some(value);
                self
            }
        }
    });
    let builds = fields.iter().map(|f| {
        let ident = &f.ident;
        let ty = &f.ty;
        let field = ident.unraw_string();
        let message = format!("{name}.{field} has no test default; set it with .{field}(...)");
        let fallback = if f.provider.is_none() {
            args::respan(quote!(<#ty as #p::Dependency>::test_default()), ty.span())
        } else {
            // A field with an explicit provider may not be a `Dependency`: no default.
            quote!(::core::option::Option::None::<#ty>)
        };
        quote! {
            #ident: match self.#ident {
                ::core::option::Option::Some(value) => value,
                ::core::option::Option::None => match #fallback {
                    ::core::option::Option::Some(value) => value,
                    ::core::option::Option::None => ::core::panic!(#message),
                },
            }
        }
    });
    let builder = if fields.is_empty() {
        quote!(_builder)
    } else {
        quote!(builder)
    };
    let factory_name = factory.to_string();

    Ok(quote! {
        #[doc = #providers_doc]
        #[derive(Debug)]
        #vis struct #providers {
            #( #[doc = #slot_docs] #field_vis #idents: #p::Provider<#types>, )*
        }

        #[doc = #factory_doc]
        #[must_use = "a factory does nothing until `build()`"]
        #vis struct #factory {
            #( #idents: ::core::option::Option<#types>, )*
        }

        const _: () = {
            fn __assert_dependency<T: #p::Dependency>() {}
            #( #assertions )*
        };

        impl #p::Providers for #providers {
            type Worker = #name;

            fn slots(&mut self) -> ::std::vec::Vec<(&'static str, &mut dyn #p::ProviderSlot)> {
                ::std::vec![ #( (#names, &mut self.#idents as &mut dyn #p::ProviderSlot), )* ]
            }

            async fn build<'a>(
                &'a self,
                #builder: &mut #p::WorkerBuilder<'a>,
            ) -> ::core::result::Result<#name, #p::DependencyError> {
                ::core::result::Result::Ok(#name {
                    #( #idents: builder.get(&self.#idents).await?, )*
                })
            }
        }

        impl #p::Dependencies for #name {
            type Providers = #providers;

            fn providers() -> #providers {
                #providers { #( #idents: #slots, )* }
            }
        }

        impl #name {
            #[doc = #factory_fn_doc]
            #vis fn worker_factory() -> #factory {
                #factory { #( #idents: ::core::option::Option::None, )* }
            }
        }

        impl #factory {
            #( #setters )*

            /// The worker: every field set, or its test default.
            ///
            /// # Panics
            ///
            /// When a field was not set and its type has no test default.
            #[track_caller]
            #vis fn build(self) -> #name {
                #name { #( #builds, )* }
            }
        }

        impl ::core::fmt::Debug for #factory {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#factory_name)
                    #( .field(#names, &self.#idents.as_ref().map(|_| "set")) )*
                    .finish()
            }
        }
    })
}

/// `#[dependencies(crate = "...")]` on the struct.
fn container_crate(cx: &Ctxt, input: &DeriveInput) -> Path {
    let mut krate = args::default_crate();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("dependencies")) {
        let Some(list) = cx.ok(attr.meta.require_list().map(|l| l.tokens.clone())) else {
            continue;
        };
        let Some(kvs) = cx.ok(args::parse_list(list)) else {
            continue;
        };
        for kv in kvs {
            match kv.name().as_str() {
                "crate" => {
                    if let Some(path) = cx.ok(kv.path()) {
                        krate = path;
                    }
                }
                _ => cx.syn_error(args::unknown_key(&kv, "dependencies", &["crate"])),
            }
        }
    }
    krate
}

fn field(cx: &Ctxt, field: &syn::Field) -> Option<Field> {
    let ident = field.ident.clone()?;
    let mut out = Field {
        ident,
        ty: field.ty.clone(),
        provider: None,
        args: Vec::new(),
    };
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("dependency")) {
        let Some(list) = cx.ok(attr.meta.require_list().map(|l| l.tokens.clone())) else {
            continue;
        };
        let Some(kvs) = cx.ok(args::parse_list(list)) else {
            continue;
        };
        let mut seen = Seen::default();
        for kv in kvs {
            if cx.ok(seen.first(&kv)).is_none() {
                continue;
            }
            if kv.name() == "provider" {
                out.provider = cx.ok(kv.expr());
            } else if let Some(value) = cx.ok(kv.lit_as_string()) {
                out.args.push((LitStr::new(&kv.name(), kv.key.span()), value));
            }
        }
    }
    Some(out)
}

trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        use syn::ext::IdentExt;
        self.unraw().to_string()
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    #[test]
    fn arguments_become_with_arg_and_providers_replace_of() {
        let input = syn::parse2(quote! {
            pub struct Svc {
                #[dependency(key = "GREETING", timeout = 5, strict = true)]
                settings: Settings<S>,
                #[dependency(provider = MyProvider::new(1))]
                db: Db,
                plain: Dep<Thing>,
            }
        })
        .unwrap();
        let out = expand(input).unwrap().to_string();
        assert!(
            out.contains(
                "of () . with_arg (\"key\" , \"GREETING\") . with_arg (\"timeout\" , \"5\") . with_arg (\"strict\" , \"true\")"
            ),
            "{out}"
        );
        assert!(
            out.contains("Provider :: < Db > :: new (MyProvider :: new (1))"),
            "{out}"
        );
        assert!(out.contains("pub struct SvcProviders"), "{out}");
        assert!(out.contains("pub struct SvcWorkerFactory"), "{out}");
        assert!(
            out.contains("Svc.plain has no test default; set it with .plain(...)"),
            "{out}"
        );
    }
}
