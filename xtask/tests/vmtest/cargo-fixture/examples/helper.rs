fn main() {
    println!("helper ran");
}
