//! `afas-sync generate`: the man pages and shell completions, made from the
//! clap definitions by clap's own generators, so they never drift from
//! `--help`. The packages run it at build time.

use std::io::Write;
use std::path::PathBuf;

use clap::{CommandFactory, Subcommand, ValueEnum};

use super::Cli;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Man pages into DIR: afas-sync(1) and one per subcommand
    /// (afas-sync-sync(1), …).
    Man { dir: PathBuf },
    /// Completions for bash, zsh or fish, to stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// What the main page says beyond `--help`: exit codes, files, environment.
const MAIN_PAGE_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
success
.TP
\fB1\fR
failure at run time (a check failed, AFAS or the state file refused)
.TP
\fB2\fR
bad configuration or usage; the message names the config key
.TP
\fB3\fR
a guard held the sync for approval (\fBafas\-sync plan show\fR)
.TP
\fB4\fR
the sync found nothing to change
.TP
\fB5\fR
the sync committed, but delivery is not complete (\fBafas\-sync status\fR)
.SH FILES
.TP
\fI/etc/afas\-sync/config.toml\fR
the configuration (\fBafas\-sync config example\fR prints a commented one)
.TP
\fI/etc/afas\-sync/afas_token\fR
the AFAS App Connector token, loaded as the systemd credential \fBafas_token\fR
.TP
\fI/var/lib/afas\-sync/afas\-sync.redb\fR
the snapshot, runs, mutations and delivery outbox
.TP
\fI/usr/share/afas\-sync/\fR
Prometheus alert rules, the Grafana dashboard, SCIM schemas
.SH ENVIRONMENT
.TP
\fBAFAS_SYNC_CONFIG\fR, \fBAFAS_SYNC_LOG\fR
as \fB\-\-config\fR and \fB\-\-log\-level\fR
.TP
\fBCREDENTIALS_DIRECTORY\fR
where systemd credentials (secrets) are read from
.TP
\fBNO_COLOR\fR
no colour in log lines
.SH "SEE ALSO"
/usr/share/doc/afas\-sync/README.md
"#;

pub(super) fn run(what: &Generate) -> i32 {
    let result = match what {
        Generate::Man { dir } => man_pages(dir),
        Generate::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "afas-sync", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}

fn man_pages(dir: &std::path::Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write man pages to {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    // Every subcommand's page, then the main page again with its extra
    // sections.
    clap_mangen::generate_to(Cli::command(), dir).map_err(fail)?;
    let man = clap_mangen::Man::new(Cli::command());
    let mut page = Vec::new();
    man.render_title(&mut page).map_err(fail)?;
    man.render_name_section(&mut page).map_err(fail)?;
    man.render_synopsis_section(&mut page).map_err(fail)?;
    man.render_description_section(&mut page).map_err(fail)?;
    man.render_options_section(&mut page).map_err(fail)?;
    man.render_subcommands_section(&mut page).map_err(fail)?;
    page.extend_from_slice(MAIN_PAGE_EXTRA.as_bytes());
    man.render_version_section(&mut page).map_err(fail)?;
    let path = dir.join(man.get_filename());
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&page))
        .map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)?.flatten() {
        println!("{}", entry.path().display());
    }
    Ok(())
}
