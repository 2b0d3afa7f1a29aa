#!/usr/bin/env bash
# scripts/install-tex.sh: the TeX engine that builds paper/main.pdf (`snakemake all`), from the
# machine's own package manager, where it is missing. Run by `make install`; safe to run again.
#
#   bash scripts/install-tex.sh          install what is missing (nothing when all is there)
#   bash scripts/install-tex.sh --check  only say what is there and what is missing (exit 0)
#
# Nothing to do when latexmk (or tectonic, which fetches its own packages) is on PATH and every
# \usepackage of paper/main.tex is found by kpsewhich. Otherwise, on Debian or Ubuntu as root
# (or with password-less sudo) it installs, without recommends:
#   latexmk                    the build driver the `paper` rule calls (pdflatex)
#   texlive-latex-base         LaTeX, amsmath, graphicx, longtable, geometry, hyperref (pulls
#                              texlive-base: amssymb and the Computer Modern fonts)
#   texlive-latex-recommended  booktabs, caption
#   poppler-utils              pdftotext, pdftoppm (the tests read and render the PDF)
# about 48 MB of downloads, 150 MB on disk. A package that main.tex starts to use and these
# lack is named after the install (add the Debian package that ships it to TEX_PACKAGES below).
# Anywhere else (a laptop, no root, another OS) it prints how to install TeX and exits 0, so an
# install never fails for want of TeX: the pipeline then skips the PDF and says so.
# TOM_SKIP_TEX=1 skips this script.
set -euo pipefail
cd "$(dirname "$0")/.."

TEX_PACKAGES=(latexmk texlive-latex-base texlive-latex-recommended poppler-utils)
HOWTO="conda install -c conda-forge tectonic (any OS), or your OS's TeX Live with latexmk \
(Debian/Ubuntu: sudo apt-get install latexmk texlive-latex-recommended poppler-utils; \
macOS: brew install --cask mactex-no-gui)"

say() { echo "install-tex: $*"; }

# The LaTeX packages paper/main.tex loads (\usepackage[...]{a,b}), one per line.
tex_packages() {
    sed -nE 's/%.*//; s/.*\\usepackage(\[[^]]*\])?\{([^}]*)\}.*/\2/p' paper/main.tex \
        | tr ',' '\n' | tr -d ' ' | sed '/^$/d' | sort -u
}

# The .sty files of main.tex that kpsewhich does not find (none when kpsewhich is missing).
missing_styles() {
    command -v kpsewhich > /dev/null || return 0
    local pkg
    for pkg in $(tex_packages); do
        kpsewhich "$pkg.sty" > /dev/null || echo "$pkg.sty"
    done
}

missing_tools() {
    local tool
    for tool in latexmk pdftotext pdftoppm; do
        command -v "$tool" > /dev/null || echo "$tool"
    done
}

if [[ ${TOM_SKIP_TEX:-} == 1 ]]; then
    say "TOM_SKIP_TEX=1: not checking for TeX"
    exit 0
fi

missing=$(missing_tools; missing_styles)
if [[ -z $missing ]]; then
    say "latexmk, pdftotext, pdftoppm and every package of paper/main.tex are installed"
    exit 0
fi
if command -v tectonic > /dev/null && ! command -v latexmk > /dev/null; then
    say "tectonic is on PATH (it fetches LaTeX packages itself); not installing TeX Live"
    exit 0
fi
if [[ ${1:-} == --check ]]; then
    say "missing: $(echo $missing)"
    exit 0
fi

if ! command -v apt-get > /dev/null; then
    say "missing $(echo $missing); not installing (no apt-get here)." \
        "paper/main.pdf needs a TeX engine: $HOWTO"
    exit 0
fi
if [[ $(id -u) == 0 ]]; then
    SUDO=()
elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
    SUDO=(sudo -n)
else
    say "missing $(echo $missing); not installing (apt-get needs root or password-less sudo)." \
        "paper/main.pdf needs a TeX engine: $HOWTO"
    exit 0
fi

say "installing ${TEX_PACKAGES[*]} (missing: $(echo $missing))"
start=$SECONDS
LOG=${TMPDIR:-/tmp}/tom-install-tex.log
apt_get() { ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
apt_get update -qq || say "apt-get update failed; trying the package lists already here" >&2
apt_get install -y --no-install-recommends "${TEX_PACKAGES[@]}" > "$LOG" 2>&1 || {
    tail -n 20 "$LOG" >&2
    say "apt-get install failed (log: $LOG)" >&2
    exit 1
}
say "installed in $((SECONDS - start)) s;" \
    "$(grep -m1 -o 'Need to get.*archives' "$LOG" || echo 'nothing downloaded')" \
    "(log: $LOG)"
still=$(missing_tools; missing_styles)
if [[ -n $still ]]; then
    say "still missing after the install: $(echo $still). Add the Debian package that ships" \
        "it (apt-file search NAME.sty) to TEX_PACKAGES in scripts/install-tex.sh" >&2
    exit 1
fi
