fn main() {
    if let Some(code) =
        cellmesh_cell::engine::run_worker_if_requested(cellmesh_cell::engine::Functions::builtin)
    {
        std::process::exit(code)
    }
    eprintln!("cellmesh-cell: under construction (issue 3)");
    std::process::exit(2);
}
