fn main() {
    eprintln!("cellmesh-cell: under construction (issue 3)");
    std::process::exit(2);
}
