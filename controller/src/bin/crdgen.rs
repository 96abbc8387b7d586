//! Writes the AuthPolicy CRD as YAML to stdout (`make crds` stores it in `crds/`).
fn main() {
    print!("{}", sidekey_controller::crd_yaml());
}
