//! Short, unique, readable layer names for tables (`inspect`, `prune`, `fit`, the HTML
//! report); JSON keeps the full names.
//!
//! Exporters name nodes by scope paths (`/block1/a/a.0/Conv`), and tf2onnx joins every fused
//! TensorFlow op into one name with `;` (200 characters and more, all starting alike). A
//! table shows, per name: the last of its `;`-joined ops, without the leading path the names
//! share (`functional_1/`), cut after the first path component that tells it apart from the
//! others (`depthwise_conv2d_1`, `block1/a`). Layers of tied producers (`a+b`) shorten each
//! part.

/// Most characters a short name keeps; longer ones keep their end, marked with `…`.
const MAX_CHARS: usize = 40;

/// One short name per name, in order: unique whenever the names are.
///
/// ```
/// let names = [
///     "functional_1/activation/Relu;functional_1/depthwise_conv2d/depthwise;functional_1/depthwise_conv2d/BiasAdd",
///     "functional_1/activation_1/Relu;functional_1/conv2d_1/Conv2D;functional_1/conv2d_1/BiasAdd",
///     "Identity",
/// ];
/// assert_eq!(
///     paoding_cli::names::short_names(&names),
///     ["depthwise_conv2d", "conv2d_1", "Identity"]
/// );
/// ```
pub fn short_names<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    // Every distinct part (a layer may join several producers with `+`), shortened together.
    let mut parts: Vec<&str> = Vec::new();
    for name in names {
        for part in name.as_ref().split('+') {
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
    }
    let short = short_parts(&parts);
    let mut out: Vec<String> = names
        .iter()
        .map(|name| {
            name.as_ref()
                .split('+')
                .map(|part| short[parts.iter().position(|p| *p == part).unwrap_or(0)].as_str())
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    // Whatever still collides (names cut to their end, repeated names) gets its index.
    let repeated: Vec<bool> = out
        .iter()
        .map(|o| out.iter().filter(|p| *p == o).count() > 1)
        .collect();
    for (i, (o, repeated)) in out.iter_mut().zip(repeated).enumerate() {
        if repeated {
            *o = format!("{o} #{i}");
        }
    }
    out
}

fn short_parts(parts: &[&str]) -> Vec<String> {
    let paths: Vec<Vec<&str>> = parts
        .iter()
        .map(|p| {
            let last = p.rsplit(';').next().unwrap_or(p).trim();
            last.split('/').filter(|c| !c.is_empty()).collect()
        })
        .collect();
    // The leading components every multi-component path shares, as long as each keeps one.
    let long: Vec<&Vec<&str>> = paths.iter().filter(|p| p.len() > 1).collect();
    let mut common = 0;
    if let Some(first) = long.first() {
        while common + 1 < long.iter().map(|p| p.len()).min().unwrap_or(0)
            && long.iter().all(|p| p[common] == first[common])
        {
            common += 1;
        }
    }
    let stripped: Vec<&[&str]> = paths
        .iter()
        .map(|p| if p.len() > 1 { &p[common..] } else { &p[..] })
        .collect();
    // Each path grows from its first component until no other path shares its prefix.
    let mut taken = vec![1usize; parts.len()];
    let shown =
        |i: usize, taken: &[usize]| stripped[i][..taken[i].min(stripped[i].len())].join("/");
    loop {
        let current: Vec<String> = (0..parts.len()).map(|i| shown(i, &taken)).collect();
        let mut grew = false;
        for i in 0..parts.len() {
            let shared = current
                .iter()
                .enumerate()
                .any(|(j, c)| j != i && *c == current[i]);
            if shared && taken[i] < stripped[i].len() {
                taken[i] += 1;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    (0..parts.len())
        .map(|i| {
            let s = shown(i, &taken);
            let s = if s.is_empty() {
                parts[i].trim().to_string()
            } else {
                s
            };
            let n = s.chars().count();
            if n > MAX_CHARS {
                let tail: String = s.chars().skip(n - (MAX_CHARS - 1)).collect();
                format!("…{tail}")
            } else {
                s
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::short_names;

    #[test]
    fn exporters_names_become_their_distinguishing_part() {
        let torch = [
            "/conv1/Conv",
            "/MaxPool",
            "/conv2/Conv",
            "/Flatten.0",
            "/fc1/Gemm.ab",
        ];
        assert_eq!(
            short_names(&torch),
            ["conv1", "MaxPool", "conv2", "Flatten.0", "fc1"]
        );
        let nested = [
            "/net/net.0/Flatten.1",
            "/net/net.1/Gemm.ab",
            "/net/net.3/Gemm.ab",
        ];
        assert_eq!(short_names(&nested), ["net.0", "net.1", "net.3"]);
        // Two nodes of one scope keep what tells them apart.
        let keras = [
            "functional_1/conv2d/Conv2D1__45.1",
            "a;functional_1/conv2d/Conv2D1",
            "b;functional_1/depthwise_conv2d/BiasAdd/ReadVariableOp/resource1",
            "Identity",
        ];
        assert_eq!(
            short_names(&keras),
            [
                "conv2d/Conv2D1__45.1",
                "conv2d/Conv2D1",
                "depthwise_conv2d",
                "Identity"
            ]
        );
    }

    #[test]
    fn tied_layers_repeats_and_long_names_stay_unique() {
        assert_eq!(
            short_names(&["/b1/a/Conv+/stem/Conv", "/b1/b/Conv"]),
            ["b1/a+stem", "b1/b"]
        );
        assert_eq!(short_names(&["x", "x", ""]), ["x #0", "x #1", ""]);
        let long = "a".repeat(30);
        let names = [format!("{long}1{long}"), format!("{long}2{long}")];
        let short = short_names(&names);
        assert!(short
            .iter()
            .all(|s| s.chars().count() <= super::MAX_CHARS + 3));
        assert_ne!(short[0], short[1]);
    }
}
