//! The project's own files agree with each other: Leptos.toml (read by the server at run time)
//! repeats the keys cargo-leptos reads from Cargo.toml, and the example in the README parses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read_toml(name: &str) -> toml::Value {
    toml::from_str(&std::fs::read_to_string(root().join(name)).unwrap()).unwrap()
}

#[test]
fn leptos_toml_repeats_the_cargo_leptos_keys_it_shares() {
    let cargo = read_toml("Cargo.toml");
    let built = &cargo["workspace"]["metadata"]["leptos"][0];
    let leptos = read_toml("Leptos.toml");
    let runtime = leptos["package"]["metadata"]["leptos"].as_table().unwrap();
    assert!(!runtime.is_empty());
    for (key, value) in runtime {
        assert_eq!(
            Some(value),
            built.get(key),
            "Leptos.toml `{key}` differs from Cargo.toml"
        );
    }
}

#[test]
fn the_readme_configuration_example_is_valid() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("```toml\n[http]")
        .expect("README has the configuration example")
        + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let example = &readme[start..end];
    // Copied as it is, its placeholder secret is refused by name (black-box tester N's D4);
    // with a secret put in, the example is valid.
    let refused = radius_portal::config::Settings::from_toml(example)
        .expect("README example parses")
        .validate()
        .expect_err("the placeholder secret");
    assert!(refused.key.ends_with(".secret"), "{refused}");
    assert!(refused.to_string().contains("placeholder"), "{refused}");
    let filled = example.replace("secret = \"...\"", "secret = \"the-shared-secret\"");
    let settings =
        radius_portal::config::Settings::from_toml(&filled).expect("README example parses");
    settings.validate().expect("README example is valid");
    assert_eq!(settings.organizations[0].servers[0].name, "ise-1");
}
