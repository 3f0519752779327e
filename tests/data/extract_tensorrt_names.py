"""Extract the identifier names a TensorRT bindings wheel defines, without importing it.

Reads the wheel's tensorrt.so string table (NUL-terminated strings): whole strings that are
identifiers (pybind11 registers every class, method, property and enum value name as one), the
identifiers inside signature/doc strings that mention `tensorrt.`, and the tails of identifier
strings that start at a word boundary (the linker stores "Builder" inside "IBuilder", "INT8"
inside "kINT8"). Also the names defined in the wheel's Python files.
"""
import re, sys, zipfile
whl = sys.argv[1]
ident_full = re.compile(rb"[A-Za-z_][A-Za-z0-9_]{1,63}")
ident = re.compile(r"[A-Za-z_][A-Za-z0-9_]{1,63}")
names = set()
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        data = z.read(info)
        if info.filename.endswith("tensorrt.so"):
            for s in data.split(b"\0"):
                if ident_full.fullmatch(s):
                    s = s.decode()
                    names.add(s)
                    for i in range(1, len(s)):
                        if (s[i].isupper() and (s[i - 1].islower() or s[i - 1] in "Ik")) or s[i - 1] == "_":
                            names.add(s[i:])
                elif b"tensorrt." in s:
                    names.update(ident.findall(s.decode("latin-1")))
        elif info.filename.endswith(".py") and ".dist-info" not in info.filename:
            names.update(ident.findall(data.decode("utf-8", "replace")))
print("\n".join(sorted(n for n in names if len(n) >= 2 and not n.startswith("_Z"))))
