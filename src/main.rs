use clap::Parser;

fn main() {
    let cli = afas_sync::cli::Cli::parse();
    afas_sync::cli::init_logging(cli.log_level.as_deref());
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
