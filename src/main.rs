//! The `pitcrew` binary: parse arguments, set up logging, hand over to `cli`.

/// mimalloc instead of glibc's malloc: the store's writer thread and the
/// request handlers allocate small objects at high rates from different
/// threads, where glibc's arenas spend much of their time freeing and
/// consolidating (measured with perf in `bench/intake.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pitcrew::cli::main()
}
