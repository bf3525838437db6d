//! Field paths such as `listeners[2].spec.port`, used to say where in a configuration an error is.

use std::fmt;

/// One step of a [`FieldPath`]: an object key, an array index, or an array element named by its `name` (how the
/// REST API names an object whose index the caller cannot see: `routes["r1"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
    Name(String),
}

/// The location of a value inside a configuration document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The document root.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path extended by an object key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_owned()));
        p
    }

    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    /// This path extended by an array element named by its `name`.
    pub fn named(&self, name: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Name(name.to_owned()));
        p
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The steps from the root.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// A path made of these steps.
    pub fn from_segments(segments: Vec<Segment>) -> Self {
        Self(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Name(n) => write!(f, "[{n:?}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_a_field_path() {
        let p = FieldPath::root().key("listeners").index(2).key("spec").key("port");
        assert_eq!(p.to_string(), "listeners[2].spec.port");
        assert_eq!(FieldPath::root().to_string(), "(top level)");
        let p = FieldPath::root().key("routes").named("r1").key("destination");
        assert_eq!(p.to_string(), "routes[\"r1\"].destination");
    }
}
