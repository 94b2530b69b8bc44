//! How mirror types are declared: a struct that serde reads and its
//! conversion into the prost type, written from one list of fields. Apart
//! because every file of mirror types declares them with this macro.

use crate::error::Result;

/// A mirror type and the prost type it becomes.
pub(super) trait IntoProto {
    type Proto;
    fn into_proto(self) -> Result<Self::Proto>;
}

pub(super) fn all<T: IntoProto>(items: Vec<T>) -> Result<Vec<T::Proto>> {
    items.into_iter().map(IntoProto::into_proto).collect()
}

pub(super) fn opt<T: IntoProto>(item: Option<T>) -> Result<Option<T::Proto>> {
    item.map(IntoProto::into_proto).transpose()
}

/// Declares mirror types, naming each field once, in the prost type's order
/// (serde also reads a struct from an array, by position): its serde
/// attributes, its type, and how it becomes the prost field. `keep` moves it
/// as it is, `all` and `opt` convert what it holds, `hex("name")` decodes a
/// hex id and names the field in the error, `inner` unwraps an AnyValue.
macro_rules! mirror {
    (@convert keep, $v:expr) => { $v };
    (@convert all, $v:expr) => { $crate::decode::json::mirror::all($v)? };
    (@convert opt, $v:expr) => { $crate::decode::json::mirror::opt($v)? };
    (@convert inner, $v:expr) => { $v.map(|v| v.0) };
    (@convert hex, $v:expr, $label:literal) => { $v.into_bytes($label)? };
    ($(
        $name:ident => $($proto:ident)::+ {
            $($(#[$attr:meta])* $field:ident: $ty:ty => $how:ident $(($label:literal))?,)*
        }
    )*) => {$(
        #[derive(Default, serde::Deserialize)]
        #[serde(default, rename_all = "camelCase")]
        pub(super) struct $name {
            $($(#[$attr])* $field: $ty,)*
        }

        impl $crate::decode::json::mirror::IntoProto for $name {
            type Proto = $($proto)::+;
            fn into_proto(self) -> $crate::error::Result<Self::Proto> {
                Ok($($proto)::+ {
                    $($field: mirror!(@convert $how, self.$field $(, $label)?),)*
                })
            }
        }
    )*};
}
