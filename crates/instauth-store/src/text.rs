//! Values kept in text columns: UUIDs (canonical text, so one schema fits both backends) and the
//! vocabulary of `instauth-types`. They are parsed and printed here and nowhere else: a row
//! struct names a field `#[diesel(deserialize_as = Textual<Uuid>)]` and receives a `Uuid`; a value
//! that does not parse is a deserialization error ([`crate::StoreError::Corrupt`]), never a default.

use std::borrow::Cow;
use std::fmt::Debug;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;
use instauth_types::{AgentAuth, LifecycleState, Provider};
use uuid::Uuid;

/// A type stored as text.
pub trait TextValue: Sized + Debug {
    /// What it is, for error messages.
    const KIND: &'static str;
    /// Parses the stored text.
    fn parse_text(s: &str) -> Option<Self>;
    /// The text to store.
    fn to_text(&self) -> Cow<'static, str>;
}

impl TextValue for Uuid {
    const KIND: &'static str = "UUID";
    fn parse_text(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok()
    }
    fn to_text(&self) -> Cow<'static, str> {
        Cow::Owned(self.hyphenated().to_string())
    }
}

macro_rules! vocabulary_text {
    ($($t:ty),+) => {$(
        impl TextValue for $t {
            const KIND: &'static str = stringify!($t);
            fn parse_text(s: &str) -> Option<Self> {
                s.parse().ok()
            }
            fn to_text(&self) -> Cow<'static, str> {
                Cow::Borrowed(self.as_str())
            }
        }
    )+};
}
vocabulary_text!(AgentAuth, LifecycleState, Provider);

/// A [`TextValue`] in a text column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct Textual<T: TextValue>(pub T);

impl<T: TextValue> From<T> for Textual<T> {
    fn from(v: T) -> Self {
        Textual(v)
    }
}

/// Lets a row struct field of type `T` be read through `Textual<T>` (`deserialize_as`).
macro_rules! unwrap_textual {
    ($($t:ty),+) => {$(
        impl From<Textual<$t>> for $t {
            fn from(v: Textual<$t>) -> $t {
                v.0
            }
        }
    )+};
}
unwrap_textual!(Uuid, AgentAuth, LifecycleState, Provider);

impl<T: TextValue, DB: Backend> FromSql<Text, DB> for Textual<T>
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let s = String::from_sql(bytes)?;
        T::parse_text(&s)
            .map(Textual)
            .ok_or_else(|| format!("stored value {s:?} is not a valid {}", T::KIND).into())
    }
}

impl<T: TextValue> ToSql<Text, Pg> for Textual<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        std::io::Write::write_all(out, self.0.to_text().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl<T: TextValue> ToSql<Text, Sqlite> for Textual<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.to_text().into_owned());
        Ok(IsNull::No)
    }
}

/// `Textual(v)` for a filter: `workspace_agents::id.eq(text(agent_id))`.
pub fn text<T: TextValue>(v: T) -> Textual<T> {
    Textual(v)
}

/// A nullable text column read as `Option<T>` (`deserialize_as = MaybeTextual<Uuid>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
pub struct MaybeTextual<T: TextValue>(pub Option<T>);

impl<T: TextValue, DB: Backend> FromSql<diesel::sql_types::Nullable<Text>, DB> for MaybeTextual<T>
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        Textual::<T>::from_sql(bytes).map(|v| MaybeTextual(Some(v.0)))
    }

    fn from_nullable_sql(bytes: Option<DB::RawValue<'_>>) -> deserialize::Result<Self> {
        match bytes {
            Some(b) => Self::from_sql(b),
            None => Ok(MaybeTextual(None)),
        }
    }
}

impl<T: TextValue> From<MaybeTextual<T>> for Option<T> {
    fn from(v: MaybeTextual<T>) -> Self {
        v.0
    }
}
