//! `make test`'s share of the fuzzing, without libFuzzer or an instrumented build: every seed
//! (and any crash input a local `make fuzz` left in `artifacts/`) through its target's
//! property, then a fixed set of mutations of them. The mutations come from a seeded
//! generator, so a failure here fails the same way on every run; the printed input
//! reproduces it with `cargo fuzz run --fuzz-dir fuzz -s none <target> <file>`.

use std::path::{Path, PathBuf};

/// Mutants per target: enough to walk each property's branches on every seed, few enough
/// that the replay takes seconds in a debug build. `make fuzz` is where the real search is.
const MUTANTS: usize = 4_000;

/// Bytes the parsers under test give meaning to.
const INTERESTING: &[u8] = b"/.%;\\?#:@=&,\"'[]{}\n\r\t\0 ~-_+*|<>\x7f\xc3\xff0Aa";

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["seeds", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                found.push((path, bytes));
            }
        }
    }
    found.sort();
    found
}

/// xorshift64*: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let from = rng.below(other.len() + 1);
                let end = (from + rng.below(32)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            4 if !out.is_empty() => {
                let from = rng.below(out.len());
                let end = (from + 1 + rng.below(16)).min(out.len());
                let piece = out[from..end].to_vec();
                out.splice(at..at, piece);
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no seeds in fuzz/seeds/{target}");
    for (path, bytes) in &inputs {
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            panic!("{target}: {} fails its property", path.display());
        }
    }
    let mut rng = Rng(0x5eed_0000 ^ target.len() as u64 ^ (target.as_bytes()[0] as u64) << 32);
    for n in 0..MUTANTS {
        let seed = &inputs[n % inputs.len()].1;
        let other = &inputs[rng.below(inputs.len())].1;
        let input = mutate(&mut rng, seed, other);
        if std::panic::catch_unwind(|| check(&input)).is_err() {
            let file = std::env::temp_dir().join(format!("sidekey-fuzz-{target}-mutant-{n}"));
            std::fs::write(&file, &input).expect("write the failing input");
            panic!(
                "{target}: mutant {n} of the seeds fails its property; the input is in {}",
                file.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_binary_and_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in sidekey_fuzz::TARGETS {
        assert!(
            root.join(format!("fuzz_targets/{target}.rs")).is_file(),
            "{target}: no fuzz_targets/{target}.rs"
        );
        assert!(!inputs(target).is_empty(), "{target}: no seeds");
    }
}

#[test]
fn session_codec() {
    replay("session_codec", sidekey_fuzz::session_codec::check);
}

#[test]
fn redirect() {
    replay("redirect", sidekey_fuzz::redirect::check);
}

#[test]
fn path_normalizer() {
    replay("path_normalizer", sidekey_fuzz::path_normalizer::check);
}

#[test]
fn config() {
    replay("config", sidekey_fuzz::config::check);
}

#[test]
fn render_input() {
    replay("render_input", sidekey_fuzz::render_input::check);
}
