#!/usr/bin/env python3
"""Renders a terminal capture with ANSI colours (`tmux capture-pane -e -p`) as a PNG.

Usage: ansi_to_png.py CAPTURE.ansi OUT.png [COLUMNS ROWS]
Needs Pillow (Debian: python3-pil) and DejaVu Sans Mono (fonts-dejavu-core).
"""
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 14
FG, BG = (0xD0, 0xD0, 0xD0), (0x1E, 0x1E, 0x1E)
PALETTE = [(0x1E, 0x1E, 0x1E), (0xCD, 0x31, 0x31), (0x0D, 0xBC, 0x79), (0xE5, 0xE5, 0x10),
           (0x24, 0x72, 0xC8), (0xBC, 0x3F, 0xBC), (0x11, 0xA8, 0xCD), (0xE5, 0xE5, 0xE5)]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def cells(line):
    """(char, fg, bg, bold) per column, applying SGR codes (colours, bold, reverse)."""
    fg, bg, bold, reverse = FG, BG, False, False
    pos, out = 0, []
    for m in list(SGR.finditer(line)) + [None]:
        text = line[pos:m.start()] if m else line[pos:]
        for ch in text:
            f, b = (bg, fg) if reverse else (fg, bg)
            out.append((ch, f, b, bold))
        if not m:
            break
        pos = m.end()
        codes = [int(c) for c in m.group(1).split(";") if c] or [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                fg, bg, bold, reverse = FG, BG, False, False
            elif c == 1:
                bold = True
            elif c == 22:
                bold = False
            elif c == 7:
                reverse = True
            elif c == 27:
                reverse = False
            elif 30 <= c <= 37:
                fg = PALETTE[c - 30]
            elif c == 39:
                fg = FG
            elif 40 <= c <= 47:
                bg = PALETTE[c - 40]
            elif c == 49:
                bg = BG
            elif c in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
                i += 2  # 256-colour: keep the defaults
            i += 1
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    cols, rows = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (80, 24)
    font, bold = ImageFont.truetype(FONT, SIZE), ImageFont.truetype(BOLD, SIZE)
    w = font.getlength("M")  # fractional: rounding it would drift over 80 columns
    h = SIZE + 4
    img = Image.new("RGB", (round(cols * w) + 16, rows * h + 16), BG)
    draw = ImageDraw.Draw(img)
    lines = open(src, encoding="utf-8").read().split("\n")[:rows]
    for y, line in enumerate(lines):
        for x, (ch, f, b, is_bold) in enumerate(cells(line)[:cols]):
            left, right, top = 8 + round(x * w), 8 + round((x + 1) * w), 8 + y * h
            if b != BG:
                draw.rectangle([left, top, right - 1, top + h - 1], fill=b)
            if ch != " ":
                draw.text((left, top + 1), ch, font=bold if is_bold else font, fill=f)
    img.save(dst, optimize=True)


if __name__ == "__main__":
    main()
