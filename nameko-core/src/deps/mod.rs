//! Stock dependencies: [`Dep`] (a runner resource), [`Settings`] (a typed config
//! section), [`Lazy`] (provided on first use) and the context-data fields
//! ([`UserId`], [`Language`], [`AuthToken`], [`UserAgent`]).

mod lazy;

use std::{any::type_name, fmt, marker::PhantomData, ops::Deref, sync::Arc};

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use self::lazy::{Lazy, LazyProvider, LazyState};
use crate::{
    context::WorkerContext,
    dependency::{Dependency, DependencyProvider},
    error::{BoxError, SetupError},
    setup::SetupContext,
};

// ===== Dep =====

/// A resource the runner holds, by type: `Dep<dyn UserRepo>` is the
/// `Arc<dyn UserRepo>` given to [`ServiceRunner::resource`](crate::ServiceRunner::resource).
/// Dereferences to `T`.
///
/// A missing resource fails the container's start, naming service, field and type.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use nameko_core::deps::Dep;
///
/// trait Greeter: Send + Sync { fn greet(&self, name: &str) -> String; }
/// struct Plain;
/// impl Greeter for Plain { fn greet(&self, name: &str) -> String { format!("Hi, {name}!") } }
///
/// // In a unit test, fill the field directly:
/// let greeter: Dep<dyn Greeter> = Dep::from_arc(Arc::new(Plain));
/// assert_eq!(greeter.greet("Ada"), "Hi, Ada!");
/// ```
pub struct Dep<T: ?Sized>(Arc<T>);

impl<T: ?Sized> Dep<T> {
    /// Wraps a shared value.
    pub fn from_arc(value: Arc<T>) -> Self {
        Self(value)
    }

    /// The shared value.
    pub fn arc(&self) -> &Arc<T> {
        &self.0
    }
}

impl<T> Dep<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(Arc::new(value))
    }
}

impl<T: ?Sized> Clone for Dep<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for Dep<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> fmt::Debug for Dep<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dep<{}>", type_name::<T>())
    }
}

/// The provider of [`Dep<T>`]: takes the resource from the runner at setup.
pub struct DepProvider<T: ?Sized>(Option<Arc<T>>);

impl<T: ?Sized> fmt::Debug for DepProvider<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DepProvider<{}>", type_name::<T>())
    }
}

impl<T: ?Sized + Send + Sync + 'static> DependencyProvider for DepProvider<T> {
    type Output = Dep<T>;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        self.0 = Some(cx.resource::<T>()?);
        Ok(())
    }

    async fn get_dependency(&self, _cx: &WorkerContext) -> Result<(Dep<T>, ()), BoxError> {
        let value = self.0.as_ref().ok_or("the resource provider was not set up")?;
        Ok((Dep(Arc::clone(value)), ()))
    }
}

impl<T: ?Sized + Send + Sync + 'static> Dependency for Dep<T> {
    type Provider = DepProvider<T>;

    fn provider() -> DepProvider<T> {
        DepProvider(None)
    }
}

// ===== Settings =====

/// A typed section of the config, read once at setup. The section's key is the
/// provider argument `key` (`#[dependency(key = "GREETING")]`), else the field's name.
/// Dereferences to `T`. A value that does not fit `T` fails the container's start
/// with the config file, line and key path.
///
/// # Examples
///
/// ```
/// use nameko_core::deps::Settings;
///
/// #[derive(serde::Deserialize)]
/// struct Greeting { salutation: String }
///
/// let settings = Settings::new(Greeting { salutation: "Hello".into() });
/// assert_eq!(settings.salutation, "Hello");
/// ```
pub struct Settings<T>(Arc<T>);

impl<T> Settings<T> {
    /// Wraps a value (for unit tests).
    pub fn new(value: T) -> Self {
        Self(Arc::new(value))
    }
}

impl<T> Clone for Settings<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Deref for Settings<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Settings<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Settings").field(&self.0).finish()
    }
}

/// The provider of [`Settings<T>`].
pub struct SettingsProvider<T>(Option<Arc<T>>);

impl<T> fmt::Debug for SettingsProvider<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SettingsProvider<{}>", type_name::<T>())
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> DependencyProvider for SettingsProvider<T> {
    type Output = Settings<T>;
    type State = ();

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        let key = match cx.arg("key") {
            Some(key) => key.to_owned(),
            None => cx
                .field_name()
                .ok_or_else(|| SetupError::new("a Settings provider needs a `key` argument or a field name"))?
                .to_owned(),
        };
        cx.claim_config_key(&key);
        let value = cx
            .config()
            .section::<T>(&key)
            .map_err(|err| SetupError::with_source(err.to_string(), err))?;
        self.0 = Some(Arc::new(value));
        Ok(())
    }

    async fn get_dependency(&self, _cx: &WorkerContext) -> Result<(Settings<T>, ()), BoxError> {
        let value = self.0.as_ref().ok_or("the settings provider was not set up")?;
        Ok((Settings(Arc::clone(value)), ()))
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Dependency for Settings<T> {
    type Provider = SettingsProvider<T>;

    fn provider() -> SettingsProvider<T> {
        SettingsProvider(None)
    }
}

// ===== WorkerContext =====

/// The provider of a [`WorkerContext`] field: hands the worker its own context (call
/// ids, context data, config).
#[derive(Debug, Default)]
pub struct WorkerContextProvider;

impl DependencyProvider for WorkerContextProvider {
    type Output = WorkerContext;
    type State = ();

    async fn get_dependency(&self, cx: &WorkerContext) -> Result<(WorkerContext, ()), BoxError> {
        Ok((cx.clone(), ()))
    }
}

impl Dependency for WorkerContext {
    type Provider = WorkerContextProvider;

    fn provider() -> WorkerContextProvider {
        WorkerContextProvider
    }
}

// ===== context data =====

/// The provider of the context-data fields: reads one key of the worker's context
/// data.
pub struct ContextDataProvider<T>(PhantomData<fn() -> T>);

impl<T> fmt::Debug for ContextDataProvider<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContextDataProvider<{}>", type_name::<T>())
    }
}

macro_rules! context_data_dependency {
    ($(#[$doc:meta])* $name:ident, $key:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name(Option<Value>);

        impl $name {
            #[doc = concat!("The context-data key this field reads: `", $key, "` (header `nameko.", $key, "`).")]
            pub const KEY: &'static str = $key;

            /// A value for unit tests.
            pub fn new(value: impl Into<Value>) -> Self {
                Self(Some(value.into()))
            }

            /// The raw value, if the caller sent one.
            pub fn value(&self) -> Option<&Value> {
                self.0.as_ref()
            }

            /// The value, if the caller sent a string.
            pub fn as_str(&self) -> Option<&str> {
                self.0.as_ref().and_then(Value::as_str)
            }
        }

        impl DependencyProvider for ContextDataProvider<$name> {
            type Output = $name;
            type State = ();

            async fn get_dependency(&self, cx: &WorkerContext) -> Result<($name, ()), BoxError> {
                Ok(($name(cx.data().get($key).cloned()), ()))
            }
        }

        impl Dependency for $name {
            type Provider = ContextDataProvider<$name>;

            fn provider() -> Self::Provider {
                ContextDataProvider(PhantomData)
            }

            fn test_default() -> Option<Self> {
                Some(Self(None))
            }
        }
    };
}

context_data_dependency!(
    /// The caller's `user_id` (a string or a number), Nameko's `UserId`.
    UserId,
    "user_id"
);
context_data_dependency!(
    /// The caller's `language`, Nameko's `Language`.
    Language,
    "language"
);
context_data_dependency!(
    /// The caller's `auth_token`, Nameko's `AuthToken`.
    AuthToken,
    "auth_token"
);
context_data_dependency!(
    /// The caller's `user_agent`, Nameko's `UserAgent`.
    UserAgent,
    "user_agent"
);
