//! The `harness = false` test binaries' main (libtest-mimic): each test is a function returning
//! `anyhow::Result<()>`, and one that returns a [`Skip`] (also under added context) is reported
//! as ignored with the reason, on its own line — `test <name> ... ignored (SKIPPED: <why>)` —
//! never as passed. The binaries take libtest's arguments (a name filter, `--exact`, `--skip`,
//! `--test-threads`, `--list`, ...) and `RUST_TEST_THREADS`; test output is not captured.

use std::process::ExitCode;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::prereq::Skip;

/// A test: `Ok` passed, a [`Skip`] error ignored, any other error (or a panic) failed.
pub type Test = fn() -> anyhow::Result<()>;

/// `module::test` paths to `(name, test)` pairs, named as libtest names them:
/// `const TESTS: [(&str, Test); 2] = tests![a::one, b::two];`.
#[macro_export]
macro_rules! tests {
    ($($module:ident::$test:ident),* $(,)?) => {
        [$((
            concat!(stringify!($module), "::", stringify!($test)),
            $module::$test as $crate::harness::Test,
        )),*]
    };
}

/// How many tests run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// As libtest: `--test-threads`, else `RUST_TEST_THREADS`, else one per core.
    Parallel,
    /// One after the other, whatever the arguments say (the tests share machine-wide state).
    One,
}

/// Runs `tests` as the command line asks and returns the process's exit code.
pub fn run(tests: &[(&'static str, Test)], threads: Threads) -> ExitCode {
    let mut args = Arguments::from_args();
    match threads {
        Threads::One => args.test_threads = Some(1),
        // libtest honours RUST_TEST_THREADS; libtest-mimic only --test-threads.
        Threads::Parallel if args.test_threads.is_none() => {
            args.test_threads = std::env::var("RUST_TEST_THREADS")
                .ok()
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0);
        }
        Threads::Parallel => {}
    }
    let trials = tests
        .iter()
        .map(|&(name, test)| Trial::ignorable_test(name, move || outcome(test())))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// What the harness reports for a test's result. (A skip is not printed separately: the
/// harness prints from another thread, the lines would interleave.)
fn outcome(result: anyhow::Result<()>) -> Result<Completion, Failed> {
    match result {
        Ok(()) => Ok(Completion::Completed),
        Err(e) => match e.downcast_ref::<Skip>() {
            Some(Skip(why)) => Ok(Completion::ignored_with(format!("SKIPPED: {why}"))),
            // `{:?}`: the whole chain of context, as libtest prints a test's `Err`.
            None => Err(Failed::from(format!("{e:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_ignored_with_its_reason_and_an_error_fails() {
        let skipped = outcome(Err(
            anyhow::Error::new(Skip("no root".into())).context("setup")
        ));
        assert!(matches!(
            skipped,
            Ok(Completion::Ignored { reason: Some(why) }) if why == "SKIPPED: no root"
        ));
        assert!(matches!(outcome(Ok(())), Ok(Completion::Completed)));
        assert!(outcome(Err(anyhow::anyhow!("boom").context("step"))).is_err());
    }
}
