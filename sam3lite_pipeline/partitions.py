"""One partition per dataset: the key is the dataset id, the folder name under the datasets root."""

import dagster as dg

datasets = dg.DynamicPartitionsDefinition(name="datasets")
