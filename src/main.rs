use clap::Parser;

#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = afas_sync::cli::Cli::parse();
    // The demo prints its own summary; only errors go to the log by default.
    let demo_default =
        matches!(cli.command, afas_sync::cli::Command::Demo { .. }) && std::env::var_os("RUST_LOG").is_none();
    let level = cli
        .log_level
        .as_deref()
        .or(if demo_default { Some("error") } else { None });
    afas_sync::cli::init_logging(level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(afas_sync::exit::FAILURE);
        }
    };
    let code = runtime.block_on(afas_sync::cli::run(cli));
    std::process::exit(code);
}
