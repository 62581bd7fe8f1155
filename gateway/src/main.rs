//! `postern-gateway` (under construction: see issue 3).

fn main() {
    eprintln!("postern-gateway: not yet functional; see README");
    std::process::exit(2);
}
