"""Azure Blob Storage on loopback: Azurite (started by scripts/test, endpoint in
DATIVO_TEST_AZURE_ENDPOINT), reached with Microsoft's azure-storage-blob, never through dativo."""
import os
import pathlib
import uuid

AZURE = os.environ.get("DATIVO_TEST_AZURE_ENDPOINT")  # http://127.0.0.1:PORT/devstoreaccount1
# Azurite's well-known development account (published in its documentation).
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def connection_string():
    """Azurite's connection string (what pyiceberg's adlfs and the Azure SDKs take)."""
    return (f"DefaultEndpointsProtocol=http;AccountName={AZ_ACCOUNT};AccountKey={AZ_KEY};"
            f"BlobEndpoint={AZURE};")


class Azure:
    """A fresh container on Azurite."""
    scheme = "az"

    def __init__(self):
        from azure.storage.blob import BlobServiceClient
        self.svc = BlobServiceClient(account_url=AZURE, credential={"account_name": AZ_ACCOUNT,
                                                                    "account_key": AZ_KEY})
        self.bucket = f"c-{uuid.uuid4().hex[:12]}"
        self.client = self.svc.create_container(self.bucket)

    def block(self, key="${env:AZ_TEST_KEY}"):
        """The `azure:` block, indented to sit in a connector's `config:`."""
        return f"""    azure:
      endpoint: {AZURE}
      account_name: {AZ_ACCOUNT}
      account_key: "{key}\""""

    def abfss(self, path=""):
        """`path` in this container as Iceberg engines name it."""
        return f"abfss://{self.bucket}@{AZ_ACCOUNT}.dfs.core.windows.net/{path}".rstrip("/")

    def put(self, name, data):
        self.client.upload_blob(name, data, overwrite=True)

    def sas(self, write=True):
        """A SAS token for this container (read and list; write, create and delete too unless
        `write=False`), valid for an hour."""
        import datetime
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas
        return generate_container_sas(AZ_ACCOUNT, self.bucket, account_key=AZ_KEY,
                                      permission=ContainerSasPermissions(read=True, list=True, write=write,
                                                                         delete=write, create=write, add=write),
                                      expiry=datetime.datetime.utcnow() + datetime.timedelta(hours=1))

    def list(self, prefix):
        return sorted(b.name for b in self.client.list_blobs(name_starts_with=prefix))

    def get(self, name):
        return self.client.download_blob(name).readall()

    def download(self, prefix, dest):
        """Every blob under `prefix` into the directory `dest`, keeping their relative names."""
        dest = pathlib.Path(dest)
        for name in self.list(prefix.rstrip("/") + "/"):
            out = dest / name[len(prefix.rstrip("/")) + 1:]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(self.get(name))
        return dest


def split_abfss(url):
    """(container, blob name) of `abfss://container@account.dfs.core.windows.net/name`."""
    rest = url.split("://", 1)[1]
    authority, _, name = rest.partition("/")
    return authority.split("@", 1)[0], name
