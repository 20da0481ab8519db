//! The page: lessons and widgets (see `tinytune_web::app`). Built for the browser by trunk.

#[cfg(all(target_arch = "wasm32", feature = "page"))]
fn main() {
    tinytune_web::app::start();
}

#[cfg(not(all(target_arch = "wasm32", feature = "page")))]
fn main() {
    eprintln!("tinytune-web runs in a browser: build and serve it with `trunk serve` (see README.md)");
    std::process::exit(2);
}
