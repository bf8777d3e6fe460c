"""MXNet RecordIO (`.rec` + `.idx`) in pure Python: the insightface training-set format.

framing.py   dmlc-core's record framing: magic, chunk flags, escaped magics; scanning without .idx
header.py    image records (mxnet.recordio.pack): the `IfQQ` header, float labels, encoded image
reader.py    RecordFile: keyed random access through the `.idx` ("key\\toffset" lines) or a scan
dataset.py   RecordIODataset: the insightface layout (header, images, identity records) as a
             training dataset
writer.py    write_recordio / write_rec_files: any (label, encoded image) stream in that layout

Damaged records (bad framing or image header, DamagedRecord) are not fatal: the readers keep a list
`damaged` of (offset, reason) for every record they skipped, which `facelab convert` reports.
"""

from facelab.data.recordio.dataset import RecordIODataset
from facelab.data.recordio.framing import (
    MAGIC,
    Damaged,
    DamagedRecord,
    pack_record,
    read_record,
    scan_offsets,
)
from facelab.data.recordio.header import RecordHeader, pack_image, unpack_image
from facelab.data.recordio.reader import RecordFile
from facelab.data.recordio.writer import write_rec_files, write_recordio

__all__ = ["MAGIC", "Damaged", "DamagedRecord", "RecordFile", "RecordHeader", "RecordIODataset",
           "pack_image", "pack_record", "read_record", "scan_offsets", "unpack_image",
           "write_rec_files", "write_recordio"]
