//! fleetctl's table output: Go's `tabwriter` with tab padding (tab width 8, padding 1),
//! so columns line up exactly as fleetctl's do and scripts that split on tabs still work.

const TAB_WIDTH: usize = 8;

#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Every cell but a row's last is padded with tabs to its column's width (the widest
    /// cell plus one, rounded up to a tab stop).
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = |c: usize| -> usize {
            let w = self
                .rows
                .iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count() + 1)
                .max()
                .unwrap_or(0);
            w.div_ceil(TAB_WIDTH) * TAB_WIDTH
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let mut out = String::new();
        for r in &self.rows {
            for (c, cell) in r.iter().enumerate() {
                out.push_str(cell);
                if c + 1 < r.len() {
                    let n = widths[c] - cell.chars().count();
                    out.push_str(&"\t".repeat(n.div_ceil(TAB_WIDTH)));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_with_tabs_like_gos_tabwriter() {
        let mut t = Table::new();
        t.row(vec!["MACHINE".into(), "IP".into(), "METADATA".into()]);
        t.row(vec!["0123abcd...".into(), "10.0.0.1".into(), "-".into()]);
        // MACHINE column: widest 11+1=12 -> 16; "MACHINE" (7) gets 2 tabs, the id (11) 1.
        // IP column: widest 8+1=9 -> 16; "IP" gets 2 tabs, "10.0.0.1" 1.
        assert_eq!(
            t.render(),
            "MACHINE\t\tIP\t\tMETADATA\n0123abcd...\t10.0.0.1\t-\n"
        );
    }
}
