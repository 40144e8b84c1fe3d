"""numpy -> Arrow: the output types of gradients and predictions, built without copying where the type allows."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pyarrow as pa


def tensor_type(shape: Sequence[int], value: pa.DataType = pa.float32()) -> pa.DataType:
    """The output type of a gradient or prediction of per-example `shape`."""
    return pa.fixed_shape_tensor(value, list(shape))


def storage(kind: pa.DataType) -> pa.DataType:
    """The type an extension type (a tensor column's) is stored as; any other type itself."""
    return kind.storage_type if isinstance(kind, pa.BaseExtensionType) else kind


def is_list(kind: pa.DataType) -> bool:
    """A list of any of Arrow's three kinds (variable, large or fixed size), stored as such or under an extension."""
    kind = storage(kind)
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def numpy_dtype(value: pa.DataType) -> np.dtype:
    """The numpy dtype of an Arrow primitive type.

    Not `DataType.to_pandas_dtype()`: it imports pandas, which the runtime install does not have.
    """
    return pa.array([], value).to_numpy(zero_copy_only=False).dtype


def to_tensor_array(values: np.ndarray, value: pa.DataType = pa.float32()) -> pa.Array:
    """(rows, *shape) -> fixed_shape_tensor<value> (float32 by default), without copying where the type allows."""
    values = np.ascontiguousarray(values, dtype=numpy_dtype(value))
    shape = values.shape[1:]
    storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), math.prod(shape))
    return pa.ExtensionArray.from_storage(tensor_type(shape, value), storage)
