//! Secrets that never print: `Debug` is redacted and the value is reached only through
//! [`Secret::expose`], which makes every use easy to find in review. No `PartialEq`: a
//! secret is compared with [`Secret::ct_eq`], in constant time.

use std::fmt;

#[derive(Clone)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret<String> {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl Secret<String> {
    /// The text, for the one place that sends it on (a header, a form, a URL).
    pub fn expose_str(&self) -> &str {
        &self.0
    }
}

/// An optional secret's text, for the one place that sends it on.
pub trait Exposed {
    fn exposed(&self) -> Option<&str>;
}

impl Exposed for Option<Secret<String>> {
    fn exposed(&self) -> Option<&str> {
        self.as_ref().map(Secret::expose_str)
    }
}

/// An optional secret's text, compared in constant time with another's (`None` equals `None`).
pub fn same(a: &Option<Secret<String>>, b: &Option<Secret<String>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.ct_eq(b.expose().as_bytes()),
        _ => false,
    }
}

/// The wire form is the value itself: sealed cookies and stored sessions keep their layout.
impl<T: serde::Serialize> serde::Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

impl<T: AsRef<[u8]>> Secret<T> {
    /// Equal to `other`, compared in constant time (for equal lengths).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_ref(), other).into()
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_is_redacted() {
        let s = super::Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "hunter2");
        assert!(s.ct_eq(b"hunter2") && !s.ct_eq(b"hunter3") && !s.ct_eq(b"hunter"));
    }

    #[test]
    fn the_wire_form_is_the_value_itself() {
        // Sessions sealed before tokens became secrets still open, and the other way round.
        let secret = Some(super::Secret::new("token".to_string()));
        let plain = Some("token".to_string());
        assert_eq!(postcard::to_stdvec(&secret).unwrap(), postcard::to_stdvec(&plain).unwrap());
        let back: Option<super::Secret<String>> = postcard::from_bytes(&postcard::to_stdvec(&plain).unwrap()).unwrap();
        assert!(super::same(&back, &secret));
    }
}
