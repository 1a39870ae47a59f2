//! The `moat` command line (shared/API.md §3); its work is in the library's private `cli`
//! module.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    moat::command_line()
}
