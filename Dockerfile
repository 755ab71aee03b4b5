# kxds control plane image: slim, non-root, read-only friendly.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kxds ./kxds
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# Where file mode keeps kxds's xDS CA (a volume in docker-compose.yml), owned by kxds's user.
RUN mkdir -p /pki && chown 65532:65532 /pki
USER 65532:65532
EXPOSE 18000 9090
ENTRYPOINT ["kxds"]
CMD ["serve", "--kubernetes", "--xds-address=0.0.0.0:18000", "--admin-address=0.0.0.0:9090"]
