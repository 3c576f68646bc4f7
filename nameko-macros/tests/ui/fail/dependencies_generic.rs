#[derive(nameko::Dependencies)]
struct Svc<T> {
    value: T,
}

fn main() {}
