//! instauth workspace agent.

fn main() {
    println!("instauth-agent: not implemented yet");
}
