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
}
