//! The builder setters every layer's config has: one macro, so that each
//! config lists its fields once.

/// `pub fn field(mut self, value) -> Self` for each `field: Type;`, with the
/// doc comments given.
macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}
