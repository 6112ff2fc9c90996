#!/bin/sh
# Fractional snow cover (FSC) from a Sentinel-2-style product: POSIX sh + awk only, so the same
# script runs under busybox in a container and on a host.
#
# usage: snow_cover.sh INPUT_DIR OUTPUT_DIR
# INPUT_DIR holds one *.SAFE folder with B03.txt (green) and B11.txt (short-wave infrared):
# grids of reflectance x 10000, one row per line, values separated by spaces.
# Writes OUTPUT_DIR/FSC_<date>_<tile>.asc (snow cover in percent per pixel, 255 = no data)
# and OUTPUT_DIR/FSC_<date>_<tile>.json (a summary).
set -eu
input=$1
output=$2
safe=""
for candidate in "$input"/*.SAFE; do
    safe=$candidate
done
if [ -z "$safe" ] || [ ! -d "$safe" ]; then
    echo "no .SAFE product in $input" >&2
    exit 1
fi
name=$(basename "$safe" .SAFE)
date=$(echo "$name" | awk -F_ '{ print substr($3, 1, 8) }')
tile=$(echo "$name" | awk -F_ '{ print $6 }')
product="FSC_${date}_${tile}"
mkdir -p "$output"
echo "computing $product from $name"
awk -v summary="$output/$product.json" -v product="$product" -v source="$name" '
    FNR == NR { green[FNR] = $0; rows = FNR; next }
    {
        n = split(green[FNR], g, " ")
        m = split($0, s, " ")
        if (n != m) { print "row " FNR ": B03 has " n " values, B11 has " m > "/dev/stderr"; exit 3 }
        line = ""
        for (i = 1; i <= n; i++) {
            if (g[i] + s[i] <= 0) { value = 255; nodata++ }
            else {
                ndsi = (g[i] - s[i]) / (g[i] + s[i])
                # Salomonson and Appel (2004): FSC = 1.45 NDSI - 0.01, clipped to [0, 1].
                fsc = 1.45 * ndsi - 0.01
                if (fsc < 0) fsc = 0
                if (fsc > 1) fsc = 1
                value = int(fsc * 100 + 0.5)
                total += value; pixels++
                if (value > 0) snowy++
            }
            line = line (i > 1 ? " " : "") value
        }
        print line
    }
    END {
        mean = pixels ? total / pixels : 0
        printf "{\"product\": \"%s\", \"source\": \"%s\", \"pixels\": %d, \"nodata\": %d, ", product, source, pixels, nodata > summary
        printf "\"snow_pixels\": %d, \"mean_fsc_percent\": %.2f}\n", snowy, mean > summary
    }
' "$safe/B03.txt" "$safe/B11.txt" > "$output/$product.asc"
echo "wrote $product.asc and $product.json"
