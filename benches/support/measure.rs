//! What one child process costs: wall time, CPU (user+sys) and peak RSS
//! from `wait4`, for that process alone.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one child process cost, from `wait4`.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

pub struct ChildRun {
    pub usage: Usage,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Runs `cmd` to the end and reports its own rusage (not this process's).
///
/// Through a fresh launcher process (this benchmark re-executed with
/// `--measure-child`): Linux carries the parent's peak RSS into a
/// vfork()ed child's `ru_maxrss` across exec, so a child spawned straight
/// from this process, which holds the emulator's million rows, would
/// report this process's memory, not its own. The launcher is small, so
/// the figure it reports is the child's (with a floor of a few MiB).
pub fn measure(cmd: &mut Command, dir: &Path) -> Result<ChildRun, String> {
    let out_path = dir.join("child.stdout");
    let err_path = dir.join("child.stderr");
    let report = dir.join("child.usage");
    let _ = std::fs::remove_file(&report);
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let status = Command::new(me)
        .arg("--measure-child")
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdout(out)
        .stderr(err)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot start the launcher: {e}"))?;
    let text = std::fs::read_to_string(&report).map_err(|e| format!("launcher ({status}) wrote no report: {e}"))?;
    let f: Vec<u64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [wall_us, cpu_us, rss_kib, code] = f[..] else {
        return Err(format!("bad launcher report: {text}"));
    };
    Ok(ChildRun {
        usage: Usage {
            wall: Duration::from_micros(wall_us),
            cpu: Duration::from_micros(cpu_us),
            max_rss_kib: rss_kib,
        },
        code: code as i32,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

/// The launcher: runs the command with this process's stdio, then writes
/// "wall_us cpu_us max_rss_kib exit_code" to `report`.
pub fn launcher(report: &str, program: &str, args: &[String]) -> Result<(), String> {
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain FFI call with valid out-pointers; `rusage` is a POD
    // struct for which all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `ru` are valid for writes; `pid` is our child.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    if rc != pid {
        return Err(format!("wait4 failed: {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u64
    } else {
        255
    };
    let cpu = timeval(ru.ru_utime) + timeval(ru.ru_stime);
    std::fs::write(
        report,
        format!("{} {} {} {code}\n", wall.as_micros(), cpu.as_micros(), ru.ru_maxrss),
    )
    .map_err(|e| e.to_string())
}
