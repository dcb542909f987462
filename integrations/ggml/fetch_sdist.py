"""Downloads one source distribution from a Python package index and checks its digest.

Usage: fetch_sdist.py NAME VERSION SHA256 DEST

The index is PIP_INDEX_URL if set, else https://pypi.org/simple; the file is found on the
project's simple page (PEP 503) and written to DEST only if its SHA-256 is SHA256.
"""

import hashlib
import os
import re
import sys
import urllib.parse
import urllib.request


def main() -> int:
    name, version, sha256, dest = sys.argv[1:5]
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    project = re.sub(r"[-_.]+", "-", name).lower()
    page_url = f"{index}/{project}/"
    page = urllib.request.urlopen(page_url, timeout=60).read().decode()
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"
    links = [
        urllib.parse.urljoin(page_url, href)
        for href in re.findall(r'href="([^"]+)"', page)
        if urllib.parse.urlsplit(href).path.endswith("/" + filename)
    ]
    if not links:
        print(f"{filename} is not on {page_url}", file=sys.stderr)
        return 1
    url = links[0].split("#")[0]
    data = urllib.request.urlopen(url, timeout=240).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        print(f"{url}: sha256 {digest}, expected {sha256}", file=sys.stderr)
        return 1
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    print(f"fetched {url} ({len(data)} bytes, sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
