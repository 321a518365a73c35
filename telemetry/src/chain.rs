//! An error with its causes on one line, each cause once.

/// An error and its causes on one line (`outer: inner: innermost`), for log fields and error
/// answers: a message says only its own part (trueip's errors never repeat their source), the
/// chain adds the causes once each.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    Chain(e).to_string()
}

/// [`error_chain`] as a `Display`, for a log field: `error = %Chain(&e)`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
