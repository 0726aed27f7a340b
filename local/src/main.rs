//! The `cellmesh-local` binary: see `cellmesh-local --help`.

fn main() -> std::process::ExitCode {
    cellmesh_local::cli::main()
}
